// ecloud status page: draws /api/page and /api/graph; live through
// /api/stream (server-sent events), or at a past seq through the slider.
// Three views behind the location's hash: the overview (#/), the task list
// (#/tasks?q=...&state=...) and a task's page (#/task/ID).
// No framework, nothing from the network but this server; every value from
// the log goes in through textContent.
"use strict";

const STATES = ["waiting", "ready", "dispatched", "running", "succeeded", "failed", "blocked",
  "cancelled"];
const STATE_LABELS = {ready: "ready (queued)"};
const GRAPH_EVERY_MS = 2000;  // a large DAG costs the server; states change often
const LIST_EVERY_MS = 2000;   // a list scans every task on the server
const TASK_EVERY_MS = 1000;   // a task's page reads its events back from the log

let live = true;        // following the head, or looking at the past
let head = 0;
let shown = null;       // the page's data drawn last (live or past)
let liveData = null;    // the last live page's data (its throughput covers the run)
let view = "overview";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 10) return `${Number(seconds.toFixed(seconds < 1 ? 2 : 1))}s`;
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

function clockOf(ts) {  // the time of day, for the chart's axis
  return new Date(ts * 1000).toISOString().slice(11, 19);
}

// the seq the views show: none when live (the head), else the slider's
function seqQuery(sep) {
  return live || shown === null ? "" : `${sep}seq=${shown.seq}`;
}

// at most one call per `ms`, the last call never lost
function throttle(fn, ms) {
  let last = 0, timer = null;
  return () => {
    if (timer !== null) return;
    const wait = last + ms - Date.now();
    if (wait <= 0) { last = Date.now(); fn(); return; }
    timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, wait);
  };
}

async function getJSON(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({error: `${response.status}`}));
  return {ok: response.ok, status: response.status, body};
}

const taskHref = (id) => `#/task/${encodeURIComponent(id)}`;
const taskLink = (id) => el("a", {href: taskHref(id), class: "task-link"}, id);
const stateTag = (s) => el("span", {class: `state-tag s-${s}`}, s ?? "?");

function fillRows(table, rows) {
  // each cell keeps its column's name: on a phone a row is drawn as a card
  const tbody = table.tBodies[0];
  const names = [...table.tHead.rows[0].cells].map((c) => c.textContent);
  tbody.replaceChildren();
  if (!rows.length) {
    tbody.append(el("tr", {class: "none"}, el("td", {class: "empty", colspan: names.length}, "none")));
  }
  for (const cells of rows) {
    tbody.append(el("tr", {}, ...cells.map((c, i) =>
      el("td", {"data-label": names[i]}, c instanceof Node ? c : String(c)))));
  }
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
    counts.append(el("a", {href: `#/tasks?state=${s}`, title: `list the ${s} tasks`},
      el("span", {class: "swatch", style: `background:var(--${s})`}), s,
      el("span", {class: "n", id: `count-${s}`}, String(p.counts[s]))));
  }
}

function drawWorkers(data) {
  const workers = data.workers, booting = data.booting, vms = data.vms || [];
  const alive = workers.filter((w) => ["idle", "busy", "draining"].includes(w.status)).length;
  $("workers-title").textContent = `(${alive} live, ${workers.length} known)`;
  fillRows($("workers"), workers.map((w) => [
    w.id, w.vm ?? "–", w.ip ?? "–", el("span", {class: `state ${w.status}`}, w.status),
    w.used <= w.slots ? `${w.used}/${w.slots}` : `${w.slots}/${w.slots} +${w.used - w.slots} queued`,
    w.running.join(", ") || "–",
    w.idle_seconds === null ? "–" : duration(w.idle_seconds)]));
  $("booting-title").textContent = `(${booting.length})`;
  $("vms-title").textContent = `(${vms.length})`;
  fillRows($("vms"), vms.map((v) => [v.name, v.vm_id ?? "–",
    v.cloud_state === "-" ? v.status : `${v.status} (${v.cloud_state})`,
    v.worker ? `${v.worker} ${v.worker_status}` : "–", v.told || "–", v.why]));
  fillRows($("booting"), booting.map((v) => [v.vm, v.vm_id ?? "–", v.status,
    duration(v.seconds)]));
}

function drawDecisions(decisions) {
  fillRows($("decisions"), decisions.map((d) => [d.seq, utc(d.ts), d.action, d.vm, d.by,
    d.reason]));
}

function tailBlock(text, label) {
  if (!text) return null;
  return el("div", {class: "tail"}, el("div", {class: "tail-label"}, label),
    el("pre", {class: label.startsWith("stderr") ? "stderr" : "stdout"}, text));
}

function drawFinal(rows, failedCount) {
  const box = $("final-failures");
  box.replaceChildren();
  const more = failedCount > rows.length ? `, newest ${rows.length} shown` : "";
  $("final-title").replaceChildren(`(${failedCount}${more}) `,
    failedCount ? el("a", {href: "#/tasks?state=failed"}, "list them all") : "");
  if (!rows.length) box.append(el("p", {class: "empty"}, "none"));
  for (const f of rows) {
    const item = el("div", {class: "failure final"},
      el("div", {class: "failure-head"}, taskLink(f.task),
        ` attempt ${f.attempt} on ${f.worker ?? "–"} · ${f.reason} · ${utc(f.ts)} UTC`),
      tailBlock(f.stderr_tail, "stderr (tail)"));
    if (f.blocked_total) {
      const names = f.blocked.flatMap((id, i) => [i ? ", " : "", taskLink(id)]);
      if (f.blocked_total > f.blocked.length) names.push(` and ${f.blocked_total - f.blocked.length} more`);
      item.append(el("div", {class: "blocked-under"},
        el("a", {href: `#/tasks?blocked_by=${encodeURIComponent(f.task)}`},
          `blocks ${f.blocked_total} task${f.blocked_total === 1 ? "" : "s"}`), ": ", ...names));
    }
    box.append(item);
  }
}

function drawRetrying(rows) {
  const box = $("retrying");
  box.replaceChildren();
  $("retrying-title").textContent = `(${rows.length} recent)`;
  if (!rows.length) box.append(el("p", {class: "empty"}, "none"));
  for (const f of rows) {
    box.append(el("div", {class: "failure retry"},
      el("div", {class: "failure-head"}, taskLink(f.task),
        ` attempt ${f.attempt} on ${f.worker ?? "–"} (seq ${f.seq}): ${f.reason} · now `,
        stateTag(f.status)),
      tailBlock(f.stderr_tail, "stderr (tail)")));
  }
}

function drawUnschedulable(items) {
  const box = $("unschedulable");
  box.replaceChildren();
  $("unschedulable-box").hidden = !items.length;
  for (const u of items) box.append(el("div", {class: "failure"}, taskLink(u.task), `: ${u.reason}`));
}

function drawWorkflows(rows) {
  const box = $("workflows");
  box.replaceChildren();
  $("workflows-box").hidden = !rows.length;
  for (const w of rows) {
    const parts = [`${w.source || "(no file)"}: `, stateTag(w.status)];
    if (w.aborted_by) parts.push(" aborted by ", taskLink(w.aborted_by), ` (exit status ${w.exit})`);
    if (w.final) parts.push(" · final task ", taskLink(w.final));
    const caps = [];
    if (w.max_running !== null) caps.push(`${w.max_running} in all`);
    for (const [c, n] of Object.entries(w.categories)) caps.push(`${n} ${c}`);
    if (caps.length) parts.push(` · ${w.running} running (at most ${caps.join(", ")})`);
    box.append(el("div", {class: "failure"}, ...parts));
  }
}

function drawCeiling(ceiling, clock) {
  $("ceiling-box").hidden = !ceiling;
  if (!ceiling) return;
  const wait = Math.max(0, Math.round(ceiling.next_try - clock));
  $("ceiling").textContent = `at ${ceiling.at_vms} VMs: ${ceiling.reason}; ` +
    `asking again in ${wait}s, one VM at a time`;
}

function drawPage(data) {
  shown = data;
  if (data.live) liveData = data;
  head = Math.max(head, data.head);
  $("source").textContent = data.source;
  $("source").title = data.source;
  $("mode").textContent = data.live ? "live" : "history";
  $("mode").className = `badge ${data.live ? "live" : "past"}`;
  $("position").textContent = `seq ${data.seq} of ${head} · ${utc(data.clock)} UTC`;
  const slider = $("slider");
  slider.max = head;
  if (data.live) slider.value = data.seq;
  $("slider-seq").textContent = slider.value;
  $("slider-time").textContent = `(${utc(data.clock)} UTC)`;
  const input = $("time-input");
  if (document.activeElement !== input && data.clock) input.value = utc(data.clock);
  drawProgress(data.progress);
  drawThroughput();
  drawWorkers(data);
  drawDecisions(data.decisions);
  drawFinal(data.final_failures, data.progress.counts.failed);
  drawRetrying(data.retrying);
  drawUnschedulable(data.unschedulable || []);
  drawWorkflows(data.workflows || []);
  drawCeiling(data.cloud_ceiling, data.clock);
}

// ------------------------------------------------------------ the throughput

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const CHART = {height: 130, left: 36, right: 8, top: 10, bottom: 20, fewest: 20};

// the whole run's throughput (the live page's), a marker at the moment shown
function drawThroughput() {
  const box = $("throughput");
  if (!liveData || view !== "overview") return;
  const t = liveData.throughput;
  const n = t.succeeded.length;
  const width = Math.max(200, box.clientWidth - 2);
  const plotW = width - CHART.left - CHART.right, plotH = CHART.height - CHART.top - CHART.bottom;
  const sums = t.succeeded.map((s, i) => s + t.failed[i]);
  const max = Math.max(1, ...sums);
  const bw = plotW / Math.max(n, CHART.fewest);  // early in a run: a few bars, not slabs
  const root = svg("svg", {width, height: CHART.height, id: "throughput-svg",
    viewBox: `0 0 ${width} ${CHART.height}`});
  root.append(svg("line", {x1: CHART.left, x2: CHART.left + n * bw, class: "axis",
    y1: CHART.top + plotH, y2: CHART.top + plotH}));
  for (let i = 0; i < n; i++) {
    const x = CHART.left + i * bw, ok = t.succeeded[i] / max * plotH, bad = t.failed[i] / max * plotH;
    const bar = svg("g", {class: "bar"});
    bar.append(svg("rect", {x, y: CHART.top, width: bw, height: plotH, class: "hit"}));
    if (ok) bar.append(svg("rect", {x: x + 0.5, y: CHART.top + plotH - ok, width: Math.max(1, bw - 1),
      height: ok, fill: "var(--succeeded)"}));
    if (bad) bar.append(svg("rect", {x: x + 0.5, y: CHART.top + plotH - ok - bad,
      width: Math.max(1, bw - 1), height: bad, fill: "var(--failed)"}));
    const from = t.start + i * t.interval;
    bar.append(svg("title", {}, `${clockOf(from)}–${clockOf(from + t.interval)} UTC: ` +
      `${t.succeeded[i]} succeeded, ${t.failed[i]} failed`));
    root.append(bar);
  }
  root.append(svg("text", {x: CHART.left - 4, y: CHART.top + 9, class: "label end"}, String(max)));
  root.append(svg("text", {x: CHART.left - 4, y: CHART.top + plotH, class: "label end"}, "0"));
  // a time under the axis every `every` bars, at least 90 px apart
  const every = Math.max(1, Math.ceil(90 / bw));
  for (let i = 0; i <= n; i += every) {
    const x = CHART.left + i * bw;
    if (x > width - CHART.right - 30 && i !== 0) break;
    root.append(svg("line", {x1: x, x2: x, y1: CHART.top + plotH, y2: CHART.top + plotH + 4, class: "axis"}));
    root.append(svg("text", {x, y: CHART.height - 4, class: i ? "label middle" : "label"},
      clockOf(t.start + i * t.interval)));
  }
  if (!live && shown) {
    const x = CHART.left + (shown.clock - t.start) / t.interval * bw;
    root.append(svg("line", {x1: x, x2: x, y1: CHART.top - 4, y2: CHART.top + plotH, class: "marker"}));
  }
  root.addEventListener("click", (e) => {
    const rect = root.getBoundingClientRect();
    const at = (e.clientX - rect.left - CHART.left) / bw;
    const ts = t.start + Math.max(0, Math.min(n, at)) * t.interval;
    seekTo(`time=${ts}`, `no event at ${utc(ts)}`);
  });
  box.replaceChildren(root);
  const per = t.interval >= 60 ? `${t.interval / 60} min` : `${t.interval} s`;
  $("throughput-title").textContent = `(tasks finished per ${per}; click to go to that time)`;
}

// ------------------------------------------------------------------- the DAG

const GAP_X = 60, GAP_Y = 12, PAD = 10;
let lastGraph = null;
let dagFit = false;

// shorten a text node to `room` pixels, with an ellipsis (measured: glyphs differ)
function fitText(node, text, room) {
  node.textContent = text;
  if (node.getComputedTextLength() <= room) return;
  let lo = 0, hi = text.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    node.textContent = text.slice(0, mid) + "…";
    if (node.getComputedTextLength() <= room) lo = mid; else hi = mid - 1;
  }
  node.textContent = text.slice(0, lo) + "…";
}

function drawGraph(g) {
  lastGraph = g;
  // one task: its name and state; a group: its name and size, then its
  // counts per state on two lines, over a bar of the same proportions
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
  $("dag").replaceChildren(root);  // in the document first: texts are measured
  for (const e of g.edges) {
    const [x1, y1] = pos.get(e.source), [x2, y2] = pos.get(e.target);
    const a = [x1 + NODE_W, y1 + NODE_H / 2], b = [x2, y2 + NODE_H / 2];
    const mid = (a[0] + b[0]) / 2;
    const path = svg("path", {class: "edge",
      d: `M${a[0]},${a[1]} C${mid},${a[1]} ${mid},${b[1]} ${b[0]},${b[1]}`});
    path.append(svg("title", {}, `${e.source} → ${e.target} (${e.count})`));
    root.append(path);
  }
  g.nodes.forEach((n, i) => drawNode(root, n, i, pos.get(n.key), NODE_W, NODE_H, g.mode));
  const names = {task: "one node per task", pattern: "grouped by task-name pattern",
    level: "grouped by level"};
  $("dag-mode").textContent = `(${g.nodes.length} nodes, ${names[g.mode]}` +
    (grouped ? "; click a group for its tasks)" : "; click a task for its page)");
}

// one node into `root` (in the document: its texts are measured to fit)
function drawNode(root, n, i, [x, y], w, h, mode) {
  const group = svg("g", {class: "node", "data-key": n.key, tabindex: "0", role: "button"});
  root.append(group);
  const clip = `dag-clip-${i}`;
  group.append(svg("clipPath", {id: clip}, undefined));
  group.lastChild.append(svg("rect", {x: x + 4, y, width: w - 8, height: h}));
  let offset = 0;
  for (const s of STATES) {  // a bar of the node's tasks per state
    const c = n.counts[s];
    if (!c) continue;
    const bw = w * c / n.tasks;
    group.append(svg("rect", {x: x + offset, y, width: bw, height: h, fill: `var(--${s})`}));
    offset += bw;
  }
  group.append(svg("rect", {x, y, width: w, height: h, rx: 4, fill: "none", class: "frame"}));
  const label = n.tasks === 1 ? n.label : `${n.label} (${n.tasks})`;
  const parts = STATES.filter((s) => n.counts[s]).map((s) => `${n.counts[s]} ${s}`);
  const lines = n.tasks === 1 && mode === "task" ? [n.status]
    : [parts.slice(0, Math.ceil(parts.length / 2)).join(", "),
      parts.slice(Math.ceil(parts.length / 2)).join(", ")];
  const texts = [[label, 14, true], ...lines.map((text, k) => [text, 29 + 14 * k, false])];
  for (const [text, dy, bold] of texts) {
    if (!text) continue;
    const node = svg("text", {x: x + 6, y: y + dy, "clip-path": `url(#${clip})`,
      "font-weight": bold ? "600" : "400"});
    group.append(node);
    fitText(node, text, w - 12);
  }
  group.append(svg("title", {}, `${label}\n${parts.join("\n")}`));
  const open = () => {
    if (mode === "task") location.hash = taskHref(n.key);
    else openGroup(n, mode);
  };
  group.addEventListener("click", open);
  group.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); }
  });
}

$("dag-fit").addEventListener("click", () => {
  dagFit = !dagFit;
  $("dag").classList.toggle("fit", dagFit);
  $("dag-fit").setAttribute("aria-pressed", String(dagFit));
});

// The DAG wanted (live at a seq, or a past seq) and the one drawn. Live, it
// is fetched at most once per GRAPH_EVERY_MS, and the last change is never
// missed; a past seq is fetched at once. One fetch at a time.
let graphWant = null;
let graphHave = "";
let graphTimer = null;
let graphBusy = false;
let graphAt = 0;
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
      if (view === "overview") drawGraph(g); else lastGraph = g;
      graphHave = graphKey(want);
    }
  } finally {
    graphBusy = false;
    pumpGraph();
  }
}

// ------------------------------------------------------------- task lists

// A filtered, paged list of tasks (/api/tasks): a search box (a part of the
// id, or a glob), a toggle per state with its count, the filters a link set
// (blocked by a task, a DAG group), and pages of `size` rows - the server
// sends no more, so 100,000 tasks cost the browser one page. `fixed`: the
// filters its place sets (a DAG group's panel), not shown to be removed.
function makeTaskList(box, {onChange, size = 100, fixed = []} = {}) {
  const st = {q: "", states: new Set(), blocked_by: null, group: null, mode: null, offset: 0};
  const search = el("input", {type: "search", class: "search", "aria-label": "search tasks",
    placeholder: "search: part of an id, or a glob (sim-01*)"});
  const chips = el("div", {class: "chips"});
  const filters = el("div", {class: "filters"});
  const table = el("table", {class: "grid cards task-table"},
    el("thead", {}, el("tr", {}, ...["task", "state", "attempt", "worker", "why",
      "finished (UTC)"].map((h) => el("th", {}, h)))), el("tbody"));
  const prev = el("button", {type: "button", class: "small"}, "◀ previous");
  const next = el("button", {type: "button", class: "small"}, "next ▶");
  const where = el("span", {class: "muted"});
  box.replaceChildren(el("div", {class: "list-tools"}, search, chips, filters), table,
    el("div", {class: "pager"}, prev, where, next));
  let asked = 0;
  let last = null;

  function query() {
    const q = new URLSearchParams();
    if (st.q) q.set("q", st.q);
    if (st.states.size) q.set("state", [...st.states].join(","));
    for (const k of ["blocked_by", "group", "mode"]) if (st[k]) q.set(k, st[k]);
    if (st.offset) q.set("offset", String(st.offset));
    return q;
  }

  function changed() {
    if (onChange) onChange(query());
    load();
  }

  async function load() {
    const mine = ++asked;
    const q = query();
    q.set("limit", String(size));
    if (!live && shown) q.set("seq", String(shown.seq));
    const {ok, body} = await getJSON(`/api/tasks?${q}`);
    if (mine !== asked) return;  // a newer question was asked meanwhile
    if (!ok) { where.textContent = body.error; return; }
    last = body;
    draw(body);
  }

  function draw(data) {
    chips.replaceChildren(el("button", {type: "button", class: "chip",
      "aria-pressed": String(!st.states.size), "data-state": ""}, "all"));
    for (const s of STATES) {
      chips.append(el("button", {type: "button", class: "chip", "data-state": s,
        "aria-pressed": String(st.states.has(s))},
      el("span", {class: "swatch", style: `background:var(--${s})`}), STATE_LABELS[s] ?? s,
      el("span", {class: "n"}, String(data.counts[s]))));
    }
    filters.replaceChildren();
    if (st.blocked_by && !fixed.includes("blocked_by")) {
      filters.append(filterChip(`blocked by ${st.blocked_by}`, "blocked_by"));
    }
    if (st.group && !fixed.includes("group")) filters.append(filterChip(`DAG group ${st.group}`, "group"));
    filters.hidden = !filters.childElementCount;
    fillRows(table, data.rows.map((t) => [taskLink(t.id), stateTag(t.status), t.attempt || "–",
      t.worker ?? "–",
      t.blocked_by ? el("span", {}, "blocked by ", taskLink(t.blocked_by)) : (t.reason || "–"),
      t.finished_at ? utc(t.finished_at) : "–"]));
    const end = Math.min(data.offset + data.rows.length, data.matched);
    where.textContent = data.matched
      ? `${data.offset + 1}–${end} of ${data.matched} (${data.total} tasks in all)`
      : `no task matches (${data.total} in all)`;
    prev.disabled = data.offset === 0;
    next.disabled = end >= data.matched;
  }

  function filterChip(text, key) {
    const drop = el("button", {type: "button", class: "chip on", title: "remove this filter"},
      text, " ✕");
    drop.addEventListener("click", () => { st[key] = null; if (key === "group") st.mode = null; st.offset = 0; changed(); });
    return drop;
  }

  chips.addEventListener("click", (e) => {
    const chip = e.target.closest(".chip");
    if (!chip) return;
    const s = chip.dataset.state;
    if (!s) st.states.clear();
    else if (st.states.has(s)) st.states.delete(s);
    else st.states.add(s);
    st.offset = 0;
    changed();
  });
  let typing = null;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => { st.q = search.value.trim(); st.offset = 0; changed(); }, 200);
  });
  prev.addEventListener("click", () => { st.offset = Math.max(0, st.offset - size); changed(); });
  next.addEventListener("click", () => { st.offset += size; changed(); });

  return {
    st,
    load,
    refresh: throttle(load, LIST_EVERY_MS),
    set(params) {  // from a URL's query (the task list's location)
      st.q = params.get("q") || "";
      st.states = new Set((params.get("state") || "").split(",").filter((s) => STATES.includes(s)));
      st.blocked_by = params.get("blocked_by");
      st.group = params.get("group");
      st.mode = params.get("mode");
      st.offset = Math.max(0, Number(params.get("offset")) || 0);
      if (document.activeElement !== search) search.value = st.q;
      load();
    },
  };
}

const tasksView = makeTaskList($("task-list"), {
  onChange(q) {  // the list's filters are in the location: a link or reload keeps them
    const text = q.toString();
    history.replaceState(null, "", `#/tasks${text ? "?" + text : ""}`);
  },
});

const groupList = makeTaskList($("group-list"), {size: 25, fixed: ["group", "mode"]});

const MODE_NAMES = {pattern: "task-name pattern", level: "level"};
function openGroup(n, mode) {
  $("group-panel").hidden = false;
  const all = `#/tasks?group=${encodeURIComponent(n.key)}&mode=${mode}`;
  $("group-title").replaceChildren(`${n.label} · ${n.tasks} task${n.tasks === 1 ? "" : "s"} `,
    el("span", {class: "muted"}, `(by ${MODE_NAMES[mode] ?? mode}) `),
    el("a", {href: all}, "open in the task list"));
  groupList.set(new URLSearchParams({group: n.key, mode}));
  $("group-panel").scrollIntoView({block: "nearest"});
}

$("group-close").addEventListener("click", () => { $("group-panel").hidden = true; });

// ------------------------------------------------------------ a task's page

let taskId = null;
let taskAsked = 0;

const fmtSeconds = (s) => (s === null || s === undefined ? "–" : `${s} s`);

function fact(name, value) {
  return [el("dt", {}, name), el("dd", {}, value instanceof Node ? value : String(value ?? "–"))];
}

function relations(title, rel, empty) {
  const list = el("ul", {class: "relations"});
  for (const r of rel.rows) list.append(el("li", {}, taskLink(r.id), " ", stateTag(r.status)));
  const more = rel.total > rel.rows.length ? el("p", {class: "muted"},
    `and ${rel.total - rel.rows.length} more`) : null;
  return el("div", {class: "relation"}, el("h4", {}, `${title} (${rel.total})`),
    rel.total ? list : el("p", {class: "empty"}, empty), more);
}

function outcomeText(a) {
  let text = a.outcome;
  if (a.reason && a.reason !== a.outcome) text += `: ${a.reason}`;
  else if (a.exit_code !== null && a.outcome === "failed") text += `: exit code ${a.exit_code}`;
  if (a.final === true) text += " · failed for good";
  else if (a.final === false) text += " · retried";
  return text;
}

function attemptCard(a) {
  const times = [`dispatched ${utc(a.dispatched_at)}`];
  if (a.started_at) times.push(`started ${utc(a.started_at)}`);
  if (a.finished_at) times.push(`finished ${utc(a.finished_at)}`);
  if (a.duration !== null) times.push(`ran ${duration(a.duration)}`);
  return el("div", {class: `attempt o-${a.outcome.replace(/\W+/g, "-")}`},
    el("div", {class: "attempt-head"}, el("strong", {}, `#${a.attempt}`),
      ` on ${a.worker ?? "–"} · `, outcomeText(a)),
    el("div", {class: "muted"}, `${times.join(" · ")} (UTC)`),
    tailBlock(a.stderr_tail, "stderr (last 4 KiB)"),
    tailBlock(a.stdout_tail, "stdout (last 4 KiB)"));
}

function drawTask(t) {
  const page = $("task-page");
  const when = t.live ? "live" : `at seq ${t.seq} (history)`;
  const facts = el("dl", {class: "facts"},
    ...fact("attempts", `${t.attempt} (${t.failures} failed; ${t.spec.retries} retr${t.spec.retries === 1 ? "y" : "ies"} allowed)`),
    ...(t.worker ? fact("on worker", t.worker) : []),
    ...(t.reason ? fact("why", t.reason) : []),
    ...(t.blocked_by ? fact("blocked by", el("span", {}, taskLink(t.blocked_by.id), " ",
      stateTag(t.blocked_by.status))) : []),
    ...fact("submitted", `${utc(t.submitted_at)} UTC`),
    ...(t.finished_at ? fact("finished", `${utc(t.finished_at)} UTC`) : []),
    ...(t.not_before ? fact("next try after", `${utc(t.not_before)} UTC`) : []),
    ...fact("priority · slots", `${t.spec.priority} · ${t.spec.slots}`),
    ...fact("timeout", fmtSeconds(t.spec.timeout)),
    ...fact("results folder", t.spec.results));
  const command = Array.isArray(t.spec.command) ? JSON.stringify(t.spec.command) : t.spec.command;
  const spec = el("section", {}, el("h3", {}, "Command"), el("pre", {class: "command"}, command));
  if (t.spec.inputs.length) {
    const table = el("table", {class: "grid cards"}, el("thead", {}, el("tr", {},
      ...["path", "as", "from task", "sha256"].map((h) => el("th", {}, h)))), el("tbody"));
    fillRows(table, t.spec.inputs.map((i) => [i.path, i.name ?? "–",
      i.from_task ? taskLink(i.from_task) : "–", i.sha256 ?? "–"]));
    spec.append(el("h3", {}, "Inputs"), table);
  }
  if (t.spec.outputs.length) {
    spec.append(el("h3", {}, "Outputs"), el("ul", {}, ...t.spec.outputs.map((o) => el("li", {}, o))));
  }
  if (t.spec.env.length) {
    spec.append(el("h3", {}, "Environment"), el("p", {}, `${t.spec.env.join(", ")} `,
      el("span", {class: "muted"}, "(values not shown)")));
  }
  const attempts = el("section", {}, el("h3", {}, `Attempts (${t.attempts.length})`),
    ...(t.attempts.length ? [...t.attempts].reverse().map(attemptCard)
      : [el("p", {class: "empty"}, "not dispatched yet")]));
  const notes = t.notes.length ? el("section", {}, el("h3", {}, "Operator"),
    el("ul", {}, ...t.notes.map((n) => el("li", {}, `seq ${n.seq} · ${utc(n.ts)} UTC: ${n.what}`)))) : null;
  const lineage = el("section", {}, el("h3", {}, "Lineage"), el("div", {class: "lineage"},
    relations("depends on", t.parents, "nothing"),
    relations("needed by", t.children, "nothing"),
    relations("blocks", t.blocks, "nothing")));
  page.replaceChildren(...[
    el("div", {class: "task-head"}, el("a", {href: "#/tasks", class: "back"}, "◀ tasks"),
      el("h2", {id: "task-title"}, t.id), stateTag(t.status), el("span", {class: "muted"}, when)),
    facts, spec, attempts, lineage, notes].filter(Boolean));
}

async function loadTask() {
  if (taskId === null) return;
  const mine = ++taskAsked;
  const {status, body} = await getJSON(`/api/task/${encodeURIComponent(taskId)}${seqQuery("?")}`);
  if (mine !== taskAsked || view !== "task") return;
  if (status === 200) drawTask(body);
  else {
    $("task-page").replaceChildren(el("div", {class: "task-head"},
      el("a", {href: "#/tasks", class: "back"}, "◀ tasks"), el("h2", {id: "task-title"}, taskId)),
    el("p", {class: "failure"}, body.error || `error ${status}`));
  }
}

const refreshTask = throttle(loadTask, TASK_EVERY_MS);

// ---------------------------------------------------------------- the views

function showView(name) {
  const was = view;
  view = name;
  for (const v of ["overview", "tasks", "task"]) $(`view-${v}`).hidden = v !== name;
  $("nav-overview").classList.toggle("on", name === "overview");
  $("nav-tasks").classList.toggle("on", name !== "overview");
  if (name === "overview" && was !== "overview") {
    drawThroughput();  // drawn while hidden, neither chart nor labels could be measured
    if (lastGraph) drawGraph(lastGraph);
  }
}

function route() {
  const hash = location.hash.slice(1) || "/";
  const cut = hash.indexOf("?");
  const path = cut < 0 ? hash : hash.slice(0, cut);
  const params = new URLSearchParams(cut < 0 ? "" : hash.slice(cut + 1));
  if (path.startsWith("/task/")) {
    showView("task");
    const id = decodeURIComponent(path.slice("/task/".length));
    if (id !== taskId) $("task-page").replaceChildren(el("p", {class: "muted"}, `loading ${id} …`));
    taskId = id;
    window.scrollTo(0, 0);
    loadTask();
  } else if (path === "/tasks") {
    showView("tasks");
    tasksView.set(params);
  } else {
    showView("overview");
  }
}

window.addEventListener("hashchange", route);

// whatever is open follows the moment shown
function refreshViews(now) {
  if (view === "task") (now ? loadTask : refreshTask)();
  else if (view === "tasks") (now ? tasksView.load : tasksView.refresh)();
  else if (!$("group-panel").hidden) (now ? groupList.load : groupList.refresh)();
}

// ------------------------------------------------------------ live and past

function goLive() {
  live = true;
  $("live-button").disabled = true;
  $("jump-note").textContent = "";
  fetch("/api/page").then((r) => r.json()).then((data) => {
    drawPage(data);
    wantGraph({live: true, seq: data.seq});
    refreshViews(true);
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
  refreshViews(true);
}

function jumpTo(seq) {
  const slider = $("slider");
  slider.max = Math.max(head, seq);
  slider.value = seq;
  $("slider-seq").textContent = seq;
  if (seq >= head) goLive(); else showPast(seq);
}

// ask /api/seek where to go, and go there
async function seekTo(query, none) {
  const {ok, body} = await getJSON(`/api/seek?${query}`);
  if (!ok) { $("jump-note").textContent = body.error; return; }
  if (body.seq === null) { $("jump-note").textContent = none; return; }
  $("jump-note").textContent = "";
  jumpTo(body.seq);
}

const here = () => (live || shown === null ? head : shown.seq);
$("prev-failure").addEventListener("click", () =>
  seekTo(`failure=prev&from=${here()}`, "no failure before this moment"));
$("next-failure").addEventListener("click", () =>
  seekTo(`failure=next&from=${here()}`, "no failure after this moment"));
// "YYYY-MM-DD HH:MM[:SS]", or "HH:MM[:SS]" on the day shown; UTC, like every time here
function parseTime(text) {
  const found = text.trim().match(/^(?:(\d{4}-\d{2}-\d{2})[ T])?(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d+)?))?$/);
  if (!found) return null;
  const day = found[1] ?? utc(shown ? shown.clock : Date.now() / 1000).slice(0, 10);
  const [h, m, s] = [Number(found[2]), Number(found[3]), Number(found[4] ?? 0)];
  if (h > 23 || m > 59 || s >= 60) return null;
  const midnight = Date.parse(`${day}T00:00:00Z`) / 1000;
  return Number.isNaN(midnight) ? null : midnight + h * 3600 + m * 60 + s;
}

$("time-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const ts = parseTime($("time-input").value);
  if (ts === null) { $("jump-note").textContent = "give a time as YYYY-MM-DD HH:MM:SS (UTC)"; return; }
  seekTo(`time=${ts}`, "");
});

$("slider").addEventListener("input", (e) => {
  clearTimeout(sliderTimer);
  const seq = Number(e.target.value);
  if (seq >= head) { goLive(); return; }
  sliderTimer = setTimeout(() => showPast(seq), 120);
});
$("live-button").addEventListener("click", goLive);

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(drawThroughput, 150);
});

function connect() {
  const stream = new EventSource("/api/stream");
  stream.addEventListener("page", (message) => {
    const data = JSON.parse(message.data);
    head = Math.max(head, data.head);
    liveData = data;
    if (live) {
      drawPage(data);
      wantGraph({live: true, seq: data.seq});
      refreshViews(false);
    } else {
      $("slider").max = head;
      $("position").textContent = `seq ${$("slider").value} of ${head} (history)`;
      drawThroughput();
    }
  });
  stream.onerror = () => { $("mode").textContent = live ? "reconnecting" : "history"; };
}

route();
goLive();
connect();
