// ecloud status page: draws /api/page and /api/graph; live through
// /api/stream (server-sent events), or at a past seq through the slider.
// No framework; every value from the log goes in through textContent.
"use strict";

const STATES = ["waiting", "ready", "dispatched", "running", "succeeded", "failed", "blocked",
  "cancelled"];
let live = true;        // following the head, or looking at the past
let head = 0;
let graphBusy = false;
let graphAt = 0;        // when the DAG was last fetched (live mode)
const GRAPH_EVERY_MS = 2000;  // a large DAG costs the server; states change often

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

function utc(ts) {
  if (!ts) return "–";
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19);
}

function fillRows(tbody, rows, columns) {
  tbody.replaceChildren();
  if (!rows.length) {
    tbody.append(el("tr", {}, el("td", {class: "empty", colspan: columns}, "none")));
  }
  for (const cells of rows) tbody.append(el("tr", {}, ...cells.map((c) =>
    c instanceof Node ? el("td", {}, c) : el("td", {}, String(c)))));
}

// ------------------------------------------------------------------ the page

function drawProgress(p) {
  const bar = $("bar");
  bar.replaceChildren();
  for (const s of STATES) {
    const n = p.counts[s];
    if (!n) continue;
    bar.append(el("div", {style: `width:${100 * n / p.total}%;background:var(--${s})`,
      title: `${n} ${s}`}));
  }
  let line = `${p.done} of ${p.total} tasks done (${p.percent}%)`;
  if (p.rate) line += ` · ${p.rate.toFixed(2)} tasks/s`;
  if (p.pending === 0 && p.total) line += " · finished";
  else if (p.eta_seconds !== null) line += ` · ETA ${duration(p.eta_seconds)}`;
  $("summary-line").textContent = line;
  const counts = $("counts");
  counts.replaceChildren();
  for (const s of STATES) {
    counts.append(el("span", {},
      el("span", {class: "swatch", style: `background:var(--${s})`}), s,
      el("span", {class: "n", id: `count-${s}`}, String(p.counts[s]))));
  }
}

let currentVms = [];

function drawWorkers(workers, booting) {
  const live = workers.filter((w) => ["idle", "busy", "draining"].includes(w.status)).length;
  $("workers-title").textContent = `(${live} live, ${workers.length} known)`;
  fillRows($("workers").tBodies[0], workers.map((w) => [
    w.id, w.vm ?? "–", w.ip ?? "–", el("span", {class: `state ${w.status}`}, w.status),
    w.used <= w.slots ? `${w.used}/${w.slots}` : `${w.slots}/${w.slots} +${w.used - w.slots} queued`,
    w.running.join(", ") || "–",
    w.idle_seconds === null ? "–" : duration(w.idle_seconds)]), 7);
  $("booting-title").textContent = `(${booting.length})`;
  const vms = currentVms;
  $("vms-title").textContent = `(${vms.length})`;
  fillRows($("vms").tBodies[0], vms.map((v) => [v.name, v.vm_id ?? "–",
    v.cloud_state === "-" ? v.status : `${v.status} (${v.cloud_state})`,
    v.worker ? `${v.worker} ${v.worker_status}` : "–", v.told || "–", v.why]), 6);
  fillRows($("booting").tBodies[0], booting.map((v) => [v.vm, v.vm_id ?? "–", v.status,
    duration(v.seconds)]), 4);
}

function drawDecisions(decisions) {
  fillRows($("decisions").tBodies[0], decisions.map((d) => [d.seq, utc(d.ts), d.action, d.vm,
    d.by, d.reason]), 6);
}

function drawFailures(failures) {
  const box = $("failures");
  box.replaceChildren();
  if (!failures.length) box.append(el("p", {class: "empty"}, "none"));
  for (const f of failures) {
    const head = `${f.task} attempt ${f.attempt} on ${f.worker ?? "–"} (seq ${f.seq}): ${f.reason}`
      + (f.final ? " — failed for good" : " — will retry");
    const item = el("div", {class: "failure"}, el("div", {}, head));
    if (f.stderr_tail) item.append(el("pre", {}, f.stderr_tail));
    box.append(item);
  }
}

function drawUnschedulable(items) {
  const box = $("unschedulable");
  box.replaceChildren();
  $("unschedulable-box").hidden = !items.length;
  for (const u of items) box.append(el("div", {class: "failure"}, `${u.task}: ${u.reason}`));
}

function drawCeiling(ceiling, clock) {
  $("ceiling-box").hidden = !ceiling;
  if (!ceiling) return;
  const wait = Math.max(0, Math.round(ceiling.next_try - clock));
  $("ceiling").textContent = `at ${ceiling.at_vms} VMs: ${ceiling.reason}; ` +
    `asking again in ${wait}s, one VM at a time`;
}

function drawPage(data) {
  head = Math.max(head, data.head);
  $("source").textContent = data.source;
  $("mode").textContent = data.live ? "live" : "history";
  $("mode").className = `badge ${data.live ? "live" : "past"}`;
  $("position").textContent = `seq ${data.seq} of ${head} · ${utc(data.clock)} UTC`;
  const slider = $("slider");
  slider.max = head;
  if (data.live) slider.value = data.seq;
  $("slider-seq").textContent = slider.value;
  $("slider-time").textContent = `(${utc(data.clock)} UTC)`;
  drawProgress(data.progress);
  currentVms = data.vms || [];
  drawWorkers(data.workers, data.booting);
  drawDecisions(data.decisions);
  drawFailures(data.failures);
  drawUnschedulable(data.unschedulable || []);
  drawCeiling(data.cloud_ceiling, data.clock);
}

// ------------------------------------------------------------------- the DAG

const GAP_X = 60, GAP_Y = 12, PAD = 10;
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawGraph(g) {
  // one task: its name and state; a group: its name and size, then its
  // counts per state on two lines under a bar of the same proportions
  const grouped = g.mode !== "task";
  const NODE_W = grouped ? 210 : 150, NODE_H = grouped ? 50 : 34;
  const pos = new Map();
  let width = 0, height = 0;
  for (const n of g.nodes) {
    const x = PAD + n.level * (NODE_W + GAP_X), y = PAD + n.order * (NODE_H + GAP_Y);
    pos.set(n.key, [x, y]);
    width = Math.max(width, x + NODE_W + PAD);
    height = Math.max(height, y + NODE_H + PAD);
  }
  const root = svg("svg", {width, height, viewBox: `0 0 ${width} ${height}`, id: "dag-svg"});
  for (const e of g.edges) {
    const [x1, y1] = pos.get(e.source), [x2, y2] = pos.get(e.target);
    const a = [x1 + NODE_W, y1 + NODE_H / 2], b = [x2, y2 + NODE_H / 2];
    const mid = (a[0] + b[0]) / 2;
    const path = svg("path", {class: "edge",
      d: `M${a[0]},${a[1]} C${mid},${a[1]} ${mid},${b[1]} ${b[0]},${b[1]}`});
    path.append(svg("title", {}, `${e.source} → ${e.target} (${e.count})`));
    root.append(path);
  }
  for (const n of g.nodes) {
    const [x, y] = pos.get(n.key);
    const group = svg("g", {class: "node", "data-key": n.key});
    let offset = 0;
    for (const s of STATES) {  // a bar of the node's tasks per state
      const c = n.counts[s];
      if (!c) continue;
      const w = NODE_W * c / n.tasks;
      group.append(svg("rect", {x: x + offset, y, width: w, height: NODE_H,
        fill: `var(--${s})`}));
      offset += w;
    }
    group.append(svg("rect", {x, y, width: NODE_W, height: NODE_H, rx: 4, fill: "none",
      stroke: "#5f6b77"}));
    const label = n.tasks === 1 ? n.label : `${n.label} (${n.tasks})`;
    const room = Math.floor(NODE_W / 6.5);
    group.append(svg("text", {x: x + 6, y: y + 14, "font-weight": "600"},
      label.length > room ? label.slice(0, room - 1) + "…" : label));
    const parts = STATES.filter((s) => n.counts[s]).map((s) => `${n.counts[s]} ${s}`);
    if (n.tasks === 1) {
      group.append(svg("text", {x: x + 6, y: y + 27}, n.status));
    } else {
      const half = Math.ceil(parts.length / 2);
      group.append(svg("text", {x: x + 6, y: y + 29}, parts.slice(0, half).join(", ")));
      group.append(svg("text", {x: x + 6, y: y + 43}, parts.slice(half).join(", ")));
    }
    group.append(svg("title", {}, `${label}\n${parts.join("\n")}`));
    root.append(group);
  }
  $("dag").replaceChildren(root);
  const names = {task: "one node per task", pattern: "grouped by task-name pattern",
    level: "grouped by level"};
  $("dag-mode").textContent = `(${g.nodes.length} nodes, ${names[g.mode]})`;
}

// The DAG wanted (live at a seq, or a past seq) and the one drawn. Live, it
// is fetched at most once per GRAPH_EVERY_MS, and the last change is never
// missed; a past seq is fetched at once. One fetch at a time.
let graphWant = null;
let graphHave = "";
let graphTimer = null;
const graphKey = (w) => `${w.live ? "live" : "past"}:${w.seq}`;

function wantGraph(want) {
  graphWant = want;
  pumpGraph();
}

async function pumpGraph() {
  if (graphBusy || graphTimer !== null || graphWant === null) return;
  if (graphKey(graphWant) === graphHave) return;
  const since = Date.now() - graphAt;
  if (graphWant.live && graphHave.startsWith("live") && since < GRAPH_EVERY_MS) {
    graphTimer = setTimeout(() => { graphTimer = null; pumpGraph(); }, GRAPH_EVERY_MS - since);
    return;
  }
  const want = graphWant;
  graphBusy = true;
  graphAt = Date.now();
  try {
    const response = await fetch(want.live ? "/api/graph" : `/api/graph?seq=${want.seq}`);
    if (response.ok && graphWant.live === want.live) {  // still the view asked for
      const g = await response.json();
      drawGraph(g);
      graphHave = graphKey(want);
    }
  } finally {
    graphBusy = false;
    pumpGraph();
  }
}

// ------------------------------------------------------------ live and past

function goLive() {
  live = true;
  $("live-button").disabled = true;
  fetch("/api/page").then((r) => r.json()).then((data) => {
    drawPage(data);
    wantGraph({live: true, seq: data.seq});
  });
}

let sliderTimer = null;
async function showPast(seq) {
  live = false;
  $("live-button").disabled = false;
  $("slider-seq").textContent = seq;
  const response = await fetch(`/api/page?seq=${seq}`);
  if (!response.ok || live || String(seq) !== $("slider").value) return;
  drawPage(await response.json());
  wantGraph({live: false, seq});
}

$("slider").addEventListener("input", (e) => {
  clearTimeout(sliderTimer);
  const seq = Number(e.target.value);
  if (seq >= head) { goLive(); return; }
  sliderTimer = setTimeout(() => showPast(seq), 120);
});
$("live-button").addEventListener("click", goLive);

function connect() {
  const stream = new EventSource("/api/stream");
  stream.addEventListener("page", (message) => {
    const data = JSON.parse(message.data);
    head = Math.max(head, data.head);
    if (live) {
      drawPage(data);
      wantGraph({live: true, seq: data.seq});
    } else {
      $("slider").max = head;
      $("position").textContent = `seq ${$("slider").value} of ${head} (history)`;
    }
  });
  stream.onerror = () => { $("mode").textContent = live ? "reconnecting" : "history"; };
}

goLive();
connect();
