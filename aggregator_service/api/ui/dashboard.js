// The dashboard: reads GET /events (Server-Sent Events over fetch, so the token travels in
// the Authorization header) and draws the run, the clients, the timeline, curves and model.
"use strict";

const TOKEN_KEY = "tributary-token";
const $ = (id) => document.getElementById(id);
const view = { status: null, clients: null, run: null, rounds: new Map(), model: null, fresh: true };
let retryMs = 1000;

function token() { return sessionStorage.getItem(TOKEN_KEY); }
function authHeaders() { const t = token(); return t ? { Authorization: `Bearer ${t}` } : {}; }
function setConnection(text) { $("connection").textContent = text; }

// ------------------------------------------------------------------ the stream

async function connect() {
  setConnection(view.status ? "reconnecting…" : "connecting…");
  let reply;
  try {
    reply = await fetch("/events", { headers: authHeaders(), cache: "no-store" });
  } catch (err) {
    return retry();
  }
  if (reply.status === 401 || reply.status === 403) {
    const had = token() !== null;
    sessionStorage.removeItem(TOKEN_KEY);
    return askToken(had ? "That token was refused. Enter the admin token or the read-only viewer token."
      : "This aggregator requires a token: the admin token or the read-only viewer token.");
  }
  if (!reply.ok || !reply.body) return retry();
  view.fresh = true;
  retryMs = 1000;
  $("forget").hidden = token() === null;
  try {
    await readEvents(reply.body.getReader());
  } catch (err) { /* the stream broke: reconnect below */ }
  const finished = view.status && view.status.phase === "finished";
  retry(finished ? 15000 : 250);  // a finished run's stream ends at once: look again slowly
}

function retry(ms) {
  if (ms === undefined) setConnection("aggregator unreachable: reconnecting…");
  setTimeout(connect, ms === undefined ? retryMs : ms);
  retryMs = Math.min(retryMs * 2, 5000);
}

async function readEvents(reader) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      dispatch(buffer.slice(0, cut));
      buffer = buffer.slice(cut + 2);
    }
  }
}

function dispatch(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length === 0) return;
  const payload = JSON.parse(data.join("\n"));
  if (event === "state") onState(payload);
  else if (event === "rounds") onRounds(payload);
  else if (event === "model") onModel(payload);
}

function onState(payload) {
  view.status = payload.status;
  view.clients = payload.clients;
  view.run = payload.run;
  $("login").hidden = true;
  $("board").hidden = false;
  setConnection(`live · updated ${new Date().toLocaleTimeString()}`);
  drawRun();
  drawClients();
  const ids = payload.clients.clients.map((c) => c.client_id).join("\n");
  if (ids !== view.heatmapIds) drawHeatmap();  // else only a closed round changes it
}

function onRounds(rows) {
  if (view.fresh) { view.rounds = new Map(); view.fresh = false; }
  for (const row of rows) view.rounds.set(row.round, row);
  drawRun();
  drawHeatmap();
  drawCurves();
}

function onModel(summary) { view.model = summary; drawModel(); }

function askToken(reason) {
  $("board").hidden = true;
  $("login").hidden = false;
  $("login-reason").textContent = reason;
  $("forget").hidden = true;
  setConnection("token required");
  $("token").focus();
}

// ------------------------------------------------------------------ drawing

function rows() { return [...view.rounds.values()].sort((a, b) => a.round - b.round); }

function drawRun() {
  const s = view.status, run = view.run;
  if (!s || !run) return;
  $("run-name").textContent = run.name;
  const done = rows();
  const recent = done.slice(-5).map((r) => r.duration_s).filter((d) => typeof d === "number");
  const perRound = recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : null;
  const lastDone = done.length ? done[done.length - 1].round : 0;
  const left = Math.max(0, s.num_rounds - lastDone);
  const mode = s.mode || "sync";
  const { name, ...params } = run.strategy;
  const facts = [
    ["Strategy", `${name} ${Object.entries(params).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ")}`.trim()],
    ["Mode", mode],
    [mode === "async" ? "Version" : "Round", `${s.version ?? s.round} of ${s.num_rounds}`],
    ["Phase", s.phase + (s.attempt ? ` (attempt ${s.attempt + 1})` : "")],
    ["Updates this round", `${s.received} of ${s.needed} needed (${s.selected.length} selected)`],
    ["Round deadline", s.deadline_in_s === null ? "–" : `in ${duration(s.deadline_in_s)}`],
    ["Time per round", perRound === null ? "–" : `${duration(perRound)} (last ${recent.length})`],
    ["ETA", s.phase === "finished" ? "finished" : perRound === null ? "–" : duration(perRound * left)],
    ["Clients", `${s.registered_clients} registered, ${s.active_clients} active`],
    ["Model · data", `${run.model} · ${run.dataset}`],
    ["Last accuracy", s.last_round && s.last_round.eval_accuracy !== null ? num(s.last_round.eval_accuracy, 4) : "–"],
    ["Uptime", duration(s.uptime_s)],
  ];
  if (s.privacy) facts.push(["Epsilon spent", `${num(s.privacy.epsilon, 3)} of ${s.privacy.target_epsilon ?? "∞"}`]);
  if (run.async) facts.push(["Async", Object.entries(run.async).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(", ")]);
  if (s.buffer_size !== undefined) facts.push(["Buffer", `${s.received} of ${s.buffer_size} updates`]);
  const features = ["secagg", "compression", "download_compression", "dp_sgd"].filter((f) => run[f]);
  if (features.length) facts.push(["Features", features.join(", ").replaceAll("_", " ")]);
  const dl = $("run");
  dl.replaceChildren(...facts.map(([k, v]) => {
    const div = el("div");
    div.append(el("dt", k), el("dd", v));
    div.dataset.fact = k;
    return div;
  }));
}

function drawClients() {
  const board = view.clients;
  if (!board) return;
  const body = $("clients").querySelector("tbody");
  body.replaceChildren(...board.clients.map((c) => {
    const tr = el("tr", null, { "data-client": c.client_id, "data-state": c.state });
    const state = el("span", c.state, { class: `state state-${c.state}` });
    const refusal = c.refusal ? `${c.refusal.code} (round ${c.refusal.round}): ${c.refusal.message}` : "";
    tr.append(el("th", c.client_id, { scope: "row" }));
    const td = el("td"); td.append(state); tr.append(td);
    tr.append(el("td", ago(c.last_seen), { "data-seen": c.last_seen, class: "seen" }),
      el("td", bytes(c.bytes_in)), el("td", bytes(c.bytes_out)), el("td", num(c.train_loss, 4)),
      el("td", c.received_s === null ? "–" : `${c.received_s.toFixed(1)} s`), el("td", refusal, { class: "note" }));
    return tr;
  }));
}

function clientIds() {
  const ids = new Set(view.clients ? view.clients.clients.map((c) => c.client_id) : []);
  for (const row of view.rounds.values()) for (const id of Object.keys(row.clients || {})) ids.add(id);
  const collator = new Intl.Collator(undefined, { numeric: true });
  return [...ids].sort(collator.compare);
}

function drawHeatmap() {
  const table = $("heatmap");
  const done = rows(), ids = clientIds();
  const times = done.flatMap((r) => Object.values(r.clients || {}).map((c) => c.received_s)).filter((v) => typeof v === "number");
  const slowest = Math.max(1e-9, ...times);
  const head = el("tr");
  head.append(el("th", "client \\ round", { scope: "col" }), ...done.map((r) => el("th", r.round, { scope: "col" })));
  const body = ids.map((id) => {
    const tr = el("tr");
    tr.append(el("th", id, { scope: "row" }));
    for (const r of done) {
      const c = (r.clients || {})[id];
      let text = "·", label = "not selected", cls = "heat-cell missing";
      if (c) {
        const t = c.received_s;
        text = typeof t === "number" ? t.toFixed(1) : "✓";
        label = typeof t === "number" ? `${t.toFixed(2)} s after the round opened` : "reported";
        cls = "heat-cell";
      } else if ((r.selected || []).includes(id)) {
        text = "✕"; label = "dropped: selected, no update"; cls = "heat-cell missing";
      }
      const td = el("td", text, { class: cls, title: `client ${id}, round ${r.round}: ${label}` });
      if (c && typeof c.received_s === "number") {
        const share = c.received_s / slowest;
        td.style.background = `rgba(9, 105, 218, ${(0.08 + 0.62 * share).toFixed(3)})`;
        if (share > 0.6) td.style.color = "#fff";
      }
      tr.append(td);
    }
    return tr;
  });
  view.heatmapIds = view.clients ? view.clients.clients.map((c) => c.client_id).join("\n") : "";
  table.dataset.clients = ids.length;
  table.dataset.rounds = done.length;
  table.replaceChildren(el("thead"), el("tbody"));
  table.tHead.append(head);
  table.tBodies[0].append(...body);
}

function series(name, pick) {
  const points = [];
  for (const r of rows()) {
    const v = pick(r);
    if (typeof v === "number" && isFinite(v)) points.push([r.round, v]);
  }
  return { name, points };
}

function staleness(r) {
  const s = r.staleness;
  return s && typeof s === "object" ? s.mean ?? s.max : s;
}

function drawCurves() {
  const chart = window.TributaryCharts.lineChart;
  const figures = [
    chart("accuracy", "Global accuracy (server-side)", [series("accuracy", (r) => r.eval_accuracy)]),
    chart("loss", "Loss", [series("global loss", (r) => r.eval_loss), series("mean client train loss", (r) => r.train_loss)]),
    chart("bytes", "Bytes per round", [series("up (updates)", (r) => r.bytes_in), series("down (models)", (r) => r.bytes_out)]),
    chart("duration", "Seconds per round", [series("round duration", (r) => r.duration_s)]),
  ];
  const epsilon = series("epsilon", (r) => r.epsilon ?? r.dp_sgd_epsilon_max);
  if (epsilon.points.length) figures.push(chart("epsilon", "Epsilon spent", [epsilon]));
  const stale = series("staleness", staleness);
  if (stale.points.length) figures.push(chart("staleness", "Staleness of updates", [stale]));
  $("curves").replaceChildren(...figures);
}

function drawModel() {
  const m = view.model;
  if (!m) return;
  $("model-facts").textContent = `${m.model}, round ${m.round} (${m.phase}): ${m.total_parameters.toLocaleString()} parameters, ` +
    `${bytes(m.total_bytes)} of tensors, payload ${bytes(m.payload_bytes)}, sha256 ${m.sha256.slice(0, 16)}…`;
  const body = $("tensors").querySelector("tbody");
  body.replaceChildren(...Object.entries(m.tensors).map(([name, t]) => {
    const tr = el("tr");
    tr.append(el("th", name, { scope: "row" }), el("td", `[${t.shape.join(", ")}]`), el("td", t.dtype), el("td", num(t.l2_norm, 4)));
    return tr;
  }));
}

async function download() {
  const button = $("download");
  button.disabled = true;
  try {
    const reply = await fetch("/get_weights", { headers: { ...authHeaders(), Accept: "application/msgpack" } });
    if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
    const round = reply.headers.get("X-Tributary-Round") || "current";
    const url = URL.createObjectURL(await reply.blob());
    const a = el("a", null, { href: url, download: `tributary-model-round-${round}.msgpack` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    setConnection(`download failed: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

function refreshAges() {
  for (const td of document.querySelectorAll("td.seen")) td.textContent = ago(Number(td.dataset.seen));
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    connect();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  $("download").addEventListener("click", download);
  setInterval(refreshAges, 1000);  // redraws "seen N s ago" locally; asks the server nothing
  connect();
});
