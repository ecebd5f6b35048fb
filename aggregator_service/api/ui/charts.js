// Line charts as plain SVG: no library, nothing loaded from elsewhere.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const W = 360, H = 200, PAD = { left: 52, right: 10, top: 10, bottom: 28 };

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(lo, hi, count) {
  if (lo === hi) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.floor(lo / step) * step; ; t += step) {  // from below lo to above hi
    ticks.push(t);
    if (t >= hi - step * 1e-9) return ticks;
  }
}

function shortNumber(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toPrecision(3) + "G";
  if (a >= 1e6) return (v / 1e6).toPrecision(3) + "M";
  if (a >= 1e3) return (v / 1e3).toPrecision(3) + "k";
  if (a === 0) return "0";
  return a < 0.01 ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

// A tick's label: in k/M/G like its largest neighbour, with as many decimals as the step needs.
function tickLabel(t, ticks) {
  const top = Math.max(...ticks.map(Math.abs));
  const [div, unit] = top >= 1e9 ? [1e9, "G"] : top >= 1e6 ? [1e6, "M"] : top >= 1e3 ? [1e3, "k"] : [1, ""];
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) / div : 1;
  const decimals = Math.min(8, Math.max(0, -Math.floor(Math.log10(step))));
  return (t / div).toFixed(decimals) + unit;
}

// series: [{name, points: [[round, value], ...]}]; the first solid, the second dashed.
function lineChart(key, title, series) {
  const fig = document.createElement("figure");
  fig.dataset.chart = key;
  const cap = document.createElement("figcaption");
  cap.textContent = title;
  fig.appendChild(cap);
  const pts = series.flatMap((s) => s.points);
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `${title}: ${series.map((s) => s.name).join(", ")} per round` });
  fig.appendChild(svg);
  if (pts.length === 0) {
    svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no rounds yet"));
    return fig;
  }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const yt = niceTicks(Math.min(...ys), Math.max(...ys), 4);
  const y0 = yt[0], y1 = yt[yt.length - 1];
  const sx = (x) => PAD.left + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const sy = (y) => H - PAD.bottom - (y1 === y0 ? 0.5 : (y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  for (const t of yt) {
    svg.appendChild(svgEl("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: sy(t), y2: sy(t) }));
    svg.appendChild(svgEl("text", { x: PAD.left - 4, y: sy(t) + 4, "text-anchor": "end" }, tickLabel(t, yt)));
  }
  const xt = niceTicks(x0, x1, 5).filter((t) => Number.isInteger(t) && t >= x0 && t <= x1);
  for (const t of xt) {
    svg.appendChild(svgEl("text", { x: sx(t), y: H - PAD.bottom + 16, "text-anchor": "middle" }, String(t)));
  }
  svg.appendChild(svgEl("text", { x: W - PAD.right, y: H - 2, "text-anchor": "end" }, "round"));
  svg.appendChild(svgEl("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
  svg.appendChild(svgEl("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  series.forEach((s, i) => {
    if (s.points.length === 0) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg.appendChild(svgEl("path", { class: `series s${i}`, d }));
    const [lx, ly] = s.points[s.points.length - 1];
    const dot = svgEl("circle", { class: `last s${i}`, cx: sx(lx), cy: sy(ly), r: 3.5,
      "data-series": s.name, "data-x": lx, "data-y": ly });
    dot.appendChild(svgEl("title", {}, `${s.name}, round ${lx}: ${ly}`));
    svg.appendChild(dot);
  });
  const legend = document.createElement("p");
  legend.className = "legend";
  legend.textContent = series.map((s, i) => {
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    return `${i ? "dashed" : "solid"}: ${s.name}` + (last === null ? "" : ` (last ${shortNumber(last)})`);
  }).join(" · ");
  fig.appendChild(legend);
  return fig;
}

window.TributaryCharts = { lineChart, shortNumber };
