// The pgchanges dashboard: polls /v1/status every two seconds and draws it; follows the feed's SSE stream
// for the live tail. Plain JavaScript, no build step, no dependency.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const TAIL_MAX = 200;
let tail = null;
let paused = false;
let tailTables = "";

function text(value) { return value === null || value === undefined ? "–" : String(value); }

function size(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (bytes >= 1000 && i < units.length - 1) { bytes /= 1000; i += 1; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 10 ? `${value.toFixed(2)} s` : `${value.toFixed(0)} s`;
}

function rows(table, items) {
  const body = $(table).querySelector("tbody");
  body.replaceChildren(...items.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = text(cell);
      tr.appendChild(td);
    }
    return tr;
  }));
  if (!items.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.textContent = "none";
    td.className = "muted";
    tr.appendChild(td);
    body.appendChild(tr);
  }
}

function rates(history, field) {
  const out = [];
  for (let i = 1; i < history.length; i += 1) {
    const a = history[i - 1], b = history[i];
    if (a[field] === null || b[field] === null) continue;
    const dt = b.t - a.t;
    if (dt > 0) out.push([b.t, Math.max(0, (b[field] - a[field]) / dt)]);
  }
  return out;
}

function plot(history) {
  const canvas = $("plot");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = 180;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const series = [
    [rates(history, "changes"), style.getPropertyValue("--rate")],
    [rates(history, "delivered"), style.getPropertyValue("--sent")],
    [history.filter((p) => p.lag !== null).map((p) => [p.t, p.lag]), style.getPropertyValue("--lag")],
  ];
  const now = history.length ? history[history.length - 1].t : 0;
  const start = now - 600;
  g.strokeStyle = style.getPropertyValue("--line");
  g.fillStyle = style.getPropertyValue("--muted");
  g.font = "11px system-ui";
  for (let m = 0; m <= 10; m += 2) {
    const x = ((m * 60) / 600) * width;
    g.beginPath(); g.moveTo(x, 0); g.lineTo(x, height - 14); g.stroke();
    g.fillText(m === 10 ? "now" : `-${10 - m}m`, Math.min(x + 2, width - 24), height - 2);
  }
  series.forEach(([points, colour], index) => {
    if (points.length < 2) return;
    const top = Math.max(1e-9, ...points.map((p) => p[1])) * 1.15;
    g.strokeStyle = colour; g.lineWidth = 2; g.beginPath();
    points.forEach(([t, v], i) => {
      const x = ((t - start) / 600) * width;
      const y = (height - 16) * (1 - v / top) + 2;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
    g.fillStyle = colour;
    g.fillText(`max ${top < 10 ? (top / 1.15).toFixed(2) : (top / 1.15).toFixed(0)}`, 4, 12 + 12 * index);
  });
}

function render(s) {
  $("source").textContent = `source: ${s.source}`;
  $("serving").textContent = s.serving ? "serving" : "not serving";
  $("serving").className = `pill ${s.serving ? "good" : "bad"}`;
  $("updated").textContent = `updated ${new Date(s.time * 1000).toLocaleTimeString()}`;
  $("lag").textContent = seconds(s.lag_seconds);
  const r = rates(s.history, "changes");
  $("rate").textContent = r.length ? r[r.length - 1][1].toFixed(1) : "–";
  $("clients").textContent = s.feed ? s.feed.clients : "no feed";
  const parked = s.consumers.reduce((n, c) => n + c.parked, 0);
  const dead = s.consumers.reduce((n, c) => n + c.dead_letters, 0);
  $("dead").textContent = s.consumers.length ? `${parked} · ${dead}` : "–";
  rows("connections", [["source", s.source], ["position", s.position],
    ...Object.entries(s.connections).map(([name, up]) => [name, up ? "connected" : "down"])]);
  rows("consumers", s.consumers.map((c) => [c.name, c.backlog, seconds(c.oldest_pending_seconds), c.parked,
    c.dead_letters]));
  rows("slots", s.slots.map((x) => [x.name + (x.temporary ? " (temporary)" : ""), size(x.retained_bytes),
    size(x.lag_bytes), x.active ? `pid ${x.active_pid}${x.application_name ? ` (${x.application_name})` : ""}` : "nobody"]));
  rows("handlers", Object.entries(s.handlers).map(([name, h]) => [name, h.calls, s.handler_errors[name] || 0]));
  if (s.feed) {
    const f = s.feed;
    rows("feed", [["tables", f.tables.join(", ")], ["clients", f.clients], ["events sent", f.delivered_total],
      ["retained", `${f.retained_changes} changes, ${size(f.retained_bytes)}`], ["oldest offset", f.oldest_offset],
      ["current offset", f.current_offset], ["dropped", JSON.stringify(f.dropped)],
      ["window on disk", f.window || "none (memory)"]]);
    const select = $("tail-table");
    if (tailTables !== f.tables.join(",")) {
      tailTables = f.tables.join(",");
      select.replaceChildren(...f.tables.map((t) => new Option(t, t)));
      if (!tail) follow();
    }
  } else {
    rows("feed", [["feed", "this App serves no feed (app.feed(...))"]]);
    $("tail-state").textContent = "no feed";
  }
  plot(s.history);
}

async function poll() {
  try {
    const response = await fetch("v1/status", { cache: "no-store" });
    if (response.ok) render(await response.json());
  } catch (err) {
    $("serving").textContent = "unreachable";
    $("serving").className = "pill bad";
  }
  setTimeout(poll, POLL_MS);
}

function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) localStorage.setItem("pgchanges-token", fromHash);
  return $("tail-token").value || fromHash || localStorage.getItem("pgchanges-token") || "";
}

function line(change) {
  const li = document.createElement("li");
  const op = document.createElement("span");
  op.className = `op ${change.op}`;
  op.textContent = change.op;
  const row = change.new || change.old;
  const when = change.commit_time ? new Date(change.commit_time).toLocaleTimeString() : "";
  li.append(op, `${change.schema}.${change.table} ${when} ${row ? JSON.stringify(row) : ""}`);
  li.dataset.id = change.id;
  return li;
}

function follow() {
  if (tail) tail.close();
  const table = $("tail-table").value;
  if (!table) return;
  const query = new URLSearchParams({ table, live: "sse" });
  const where = $("tail-where").value.trim();
  if (where) query.append("where", where);
  const secret = token();
  if (secret) { query.set("access_token", secret); localStorage.setItem("pgchanges-token", secret); }
  tail = new EventSource(`v1/changes?${query}`);
  $("tail-state").textContent = `following ${table}…`;
  tail.onopen = () => { $("tail-state").textContent = `following ${table}`; };
  tail.onerror = () => { $("tail-state").textContent = "reconnecting (or not authorized: set a token)"; };
  tail.onmessage = (event) => {
    if (!event.data || paused) return;
    const list = $("tail");
    list.prepend(line(JSON.parse(event.data)));
    while (list.children.length > TAIL_MAX) list.lastChild.remove();
  };
  tail.addEventListener("dropped", (event) => {
    $("tail-state").textContent = `dropped: ${JSON.parse(event.data).message}`;
  });
}

$("tail-form").addEventListener("submit", (event) => { event.preventDefault(); follow(); });
$("tail-pause").addEventListener("click", () => {
  paused = !paused;
  $("tail-pause").textContent = paused ? "resume" : "pause";
});
poll();
