// Small helpers of the dashboard: elements, and numbers as people read them.
"use strict";

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
function num(v, digits) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }
function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 90) return `${s.toFixed(1)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function ago(wall) {
  if (!wall) return "–";
  const s = Math.max(0, Date.now() / 1000 - wall);
  return s < 2 ? "just now" : `${duration(s)} ago`;
}
