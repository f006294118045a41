// The w3gate dashboard: plain JavaScript, no framework, no build step.
// Data: /api/events (server-sent events: "snapshot", then "update" about once a second) and
// /api/history/<device> (one device's recent points and GPS track). Everything a device or an
// applet supplies (names, firmware, log lines) is hostile: it only ever goes into the page as
// text (textContent, text nodes), never as markup.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const MAX_POINTS = 300; // as the server keeps (gateway/dashboard/readings.py)
const PLOTS = [ // index into a point: [t, seq, temperature, humidity, pressure, battery]
  {key: "temperature", index: 2, label: "Temperature", unit: "°C", digits: 1},
  {key: "humidity", index: 3, label: "Humidity", unit: "%", digits: 1},
  {key: "pressure", index: 4, label: "Pressure", unit: "hPa", digits: 1},
  {key: "battery", index: 5, label: "Battery", unit: "V", digits: 2},
];

const view = {
  state: null,      // the latest snapshot
  upto: 0,          // the newest record seq the live updates have covered
  selected: null,   // the device whose plots are shown
  chosen: false,    // the user picked it (else the most recently heard one is followed)
  history: new Map(), // device -> {points, track, last}
  fetching: null,   // the device whose history is being fetched
};

// -- small DOM helpers ------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

const $ = (id) => document.getElementById(id);

function fmt(value, digits = 0, unit = "") {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits) + (unit ? " " + unit : "");
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 0) seconds = 0;
  if (seconds < 90) return Math.round(seconds) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function clock(t) {
  if (!t) return "–";
  return new Date(t * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit",
    hourCycle: "h23"});
}

function short(hex) {
  if (!hex) return "–";
  const s = String(hex);
  return s.length > 14 ? s.slice(0, 8) + "…" + s.slice(-4) : s;
}

function facts(dl, pairs) {
  dl.replaceChildren(...pairs.flatMap(([name, value]) => [el("dt", {text: name}), el("dd", {text: value})]));
}

// A table body kept in place: one row per key, updated cell by cell when its content changes, so
// rows (and what the user points at) survive the updates that come every second. A cell is text,
// or {text, class, title}, or {sig, make} where make() returns the cell's content as a node.
function table(tbody, items, keyOf, cellsOf, empty, onpick) {
  const old = new Map([...tbody.rows].filter((r) => r.dataset.key !== undefined).map((r) => [r.dataset.key, r]));
  const out = [];
  for (const item of items) {
    const key = String(keyOf(item));
    let tr = old.get(key);
    if (!tr) {
      tr = el("tr", {"data-key": key});
      if (onpick) tr.addEventListener("click", () => onpick(tr.dataset.key));
    }
    const cells = cellsOf(item);
    cells.forEach((cell, i) => {
      const td = tr.cells[i] || tr.appendChild(el("td"));
      const spec = typeof cell === "object" && cell !== null ? cell : {text: cell};
      const sig = spec.sig !== undefined ? spec.sig : "t:" + String(spec.text);
      if (td.dataset.sig === sig) return;
      td.dataset.sig = sig;
      td.className = spec.class || "";
      if (spec.title) td.title = spec.title; else td.removeAttribute("title");
      if (spec.make) td.replaceChildren(spec.make()); else td.textContent = String(spec.text);
    });
    while (tr.cells.length > cells.length) tr.deleteCell(-1);
    out.push(tr);
  }
  if (!out.length && empty) {
    const columns = tbody.parentElement.querySelectorAll("thead th").length || 1;
    out.push(el("tr", {class: "empty"}, el("td", {colspan: columns, text: empty})));
  }
  const same = out.length === tbody.rows.length && out.every((tr, i) => tbody.rows[i] === tr);
  if (!same) tbody.replaceChildren(...out);
}

// -- rendering the snapshot ---------------------------------------------------------------------

function render() {
  const s = view.state;
  if (!s) return;
  renderGateway(s);
  renderDevices(s);
  renderBuffer(s);
  renderAnchoring(s);
  renderApplets(s);
  renderLegacy(s);
  renderSystem(s);
  renderRecords();
}

function renderGateway(s) {
  const g = s.gateway;
  $("uptime").textContent = "up " + ago(g.uptime_s) + " · broker " + (g.mqtt.connected ? "connected" : "not connected");
  const problems = Object.entries(g.degraded || {});
  $("degraded").replaceChildren(...problems.map(([part, why]) => el("li", {text: part + ": " + why})));
}

function deviceLabel(row) {
  return row.name && row.name !== row.id ? row.name + " (" + row.id + ")" : row.id;
}

// A device's name as the page shows it: isolated (<bdi>), so direction marks in a hostile name
// cannot reorder the text around it.
function deviceName(row) {
  const name = el("span", {}, el("bdi", {text: row.name || row.id}));
  if (row.name && row.name !== row.id) name.append(" ", el("span", {class: "muted", text: "(" + row.id + ")"}));
  return name;
}

// A device's rejections since the start, by reason ("bad_signature 3 · replay 1"), or "–".
function rejectedCell(reasons) {
  const parts = Object.entries(reasons || {}).sort((a, b) => b[1] - a[1]).map(([r, n]) => r + " " + n);
  return el("span", {class: parts.length ? "bad" : "muted", text: parts.length ? parts.join(" · ") : "–"});
}

function renderDevices(s) {
  const devices = s.devices.rows;
  $("devices-count").textContent = s.devices.total > devices.length
    ? devices.length + " of " + s.devices.total : String(s.devices.total);
  const tbody = $("devices").tBodies[0];
  table(tbody, devices, (d) => d.id, (d) => [
    {class: "name", sig: "n:" + d.family + ":" + deviceLabel(d), make: () => el("span", {},
      el("span", {class: "family " + (d.family || ""), text: d.family === "legacy" ? "legacy" : "pebble"}),
      " ", deviceName(d))},
    d.last_seen ? ago(s.time - d.last_seen) + " ago" : "not heard",
    fmt(d.battery, 2, "V"),
    d.signal === undefined ? "–" : fmt(d.signal, 1, "dB"),
    d.trust || "–",
    d.registration || "–",
    {sig: "f:" + (d.firmware || d.profile || ""), make: () => el("bdi", {text: d.firmware || d.profile || "–"})},
    d.records || 0,
    {class: "rejected", sig: "r:" + JSON.stringify(d.rejected || {}), make: () => rejectedCell(d.rejected)},
  ], "no device registered", (id) => select(id, true));
  for (const tr of tbody.rows) {
    if (tr.dataset.key === undefined) continue;
    tr.dataset.device = tr.dataset.key;
    tr.classList.toggle("selected", tr.dataset.key === view.selected);
  }
  const chips = [];
  for (const [family, reasons] of Object.entries(s.rejections || {})) {
    for (const [reason, count] of Object.entries(reasons)) {
      chips.push(el("span", {class: "chip", "data-reason": reason, text: family + " · " + reason + " " + count}));
    }
  }
  $("rejections").replaceChildren(...(chips.length ? chips : [el("span", {class: "muted", text: "none"})]));
  // the device select: devices with readings first
  const picker = $("device-select");
  const heard = devices.filter((d) => d.points || d.positions);
  const options = heard.map((d) => el("option", {value: d.id, text: deviceLabel(d)}));
  const same = picker.options.length === options.length &&
    options.every((o, i) => picker.options[i].value === o.value && picker.options[i].textContent === o.textContent);
  if (!same) {
    picker.replaceChildren(...options);
  }
  if (heard.length && (!view.selected || (!view.chosen && !heard.some((d) => d.id === view.selected)))) {
    select(heard[0].id, false); // the first device heard from, until the user picks another
  }
  if (view.selected) picker.value = view.selected;
  // a device whose points the server has and this page lacks (its first second): fetch them
  const row = devices.find((d) => d.id === view.selected);
  const have = view.history.get(view.selected);
  if (row && row.points && (!have || !have.points.length) && view.fetching !== view.selected) fetchHistory(view.selected);
}

function renderBuffer(s) {
  const b = s.buffer;
  facts($("buffer"), [
    ["records held", fmt(b.records)],
    ["size", bytes(b.bytes)],
    ["waiting for the disk", fmt(b.pending)],
    ["newest seq", fmt(b.last_seq)],
    ["processed up to", fmt(b.processed_upto)],
    ["anchored up to", fmt(b.anchored_upto)],
    ["not anchored", b.unanchored_records === null ? "anchoring off" : fmt(b.unanchored_records)],
    ["oldest not anchored", b.oldest_unanchored_age_s === null ? "–" : ago(b.oldest_unanchored_age_s)],
    ["refused / dropped / expired", [b.refused_total, b.dropped_total, b.expired_total].map((v) => fmt(v)).join(" / ")],
    ["write failures", fmt(b.write_failures)],
  ]);
}

function renderAnchoring(s) {
  const a = s.anchoring;
  if (!a) {
    facts($("anchoring"), [["anchoring", "off ([chain] registry not set)"]]);
    table($("batches").tBodies[0], [], null, null, "no batches");
    return;
  }
  facts($("anchoring"), [
    ["network", a.network || "–"],
    ["chain", a.chain || "–"],
    ["state", a.trouble || "working"],
    ["batches", fmt(a.batches) + " (" + fmt(a.anchored_batches) + " anchored)"],
    ["last anchor", a.last_anchor_age_s === null ? "–" : ago(a.last_anchor_age_s) + " ago"],
    ["balance", a.days_left === null || a.days_left === undefined ? "–" : a.days_left + " days left"],
  ]);
  table($("batches").tBodies[0], a.latest_batches || [], (b) => b.sequence, (b) => [
    b.sequence,
    {sig: "r:" + b.first_seq + "-" + b.last_seq, make: () => el("button", {type: "button", class: "link",
      title: "the proof of record " + b.first_seq, onclick: () => showProof(b.first_seq),
      text: b.first_seq + "–" + b.last_seq})},
    {class: "mono", title: b.root, text: short(b.root)},
    {class: "state-" + b.state, text: b.state},
    {class: "mono", title: b.tx || "", text: short(b.tx)},
    fmt(b.block),
    fmt(b.confirmations),
  ], "no batch sealed yet");
}

let appletsShown = null; // what the applets' section shows, so an unchanged one is left alone

function renderApplets(s) {
  const list = s.applets || [];
  const sig = JSON.stringify(list);
  if (sig === appletsShown) return;
  appletsShown = sig;
  if (!list.length) {
    $("applets").replaceChildren(el("p", {class: "muted", text: "no project deployed"}));
    return;
  }
  $("applets").replaceChildren(...list.map((p) => el("div", {class: "project", "data-project": p.project},
    el("h3", {text: p.project + (p.deployed ? "" : " (removed)")}),
    el("dl", {class: "facts"},
      el("dt", {text: "events"}), el("dd", {text: fmt(p.events) + " · " + fmt(p.events_per_s, 1) + "/s"}),
      el("dt", {text: "failures"}), el("dd", {text: fmt(p.failures) + " · " + fmt(p.failures_per_s, 1) + "/s"}),
      el("dt", {text: "worker restarts"}), el("dd", {text: fmt(p.worker_restarts)})),
    el("ol", {class: "log"}, ...(p.log || []).map((line) => el("li", {class: "level-" + line.level},
      el("span", {class: "muted", text: clock(line.t) + " "}),
      el("span", {class: "level", text: line.level + " "}),
      el("bdi", {text: line.applet}), ": ", el("bdi", {text: line.msg})))),
  )));
}

function renderLegacy(s) {
  const l = s.legacy;
  if (!l) {
    facts($("legacy-facts"), [["legacy sensors", "off (no [serial] ports, [ble] disabled)"]]);
    table($("links").tBodies[0], [], null, null, "no links");
    return;
  }
  facts($("legacy-facts"), [["paired", fmt(l.devices)], ["frames accepted", fmt(l.accepted)],
    ["settings sent", fmt(l.configs_sent)]]);
  table($("links").tBodies[0], l.links, (k) => k.link, (k) => [
    {class: "mono wrap", text: k.link},
    {sig: "u:" + k.up, make: () => el("span", {class: "badge " + (k.up ? "on" : "off"), text: k.up ? "up" : "down"})},
    {class: "wrap", sig: "d:" + k.devices.join("\u0000"), make: () => k.devices.length
      ? el("span", {}, ...k.devices.flatMap((name, i) => [i ? ", " : null, el("bdi", {text: name})]))
      : document.createTextNode("–")},
  ], "no link open");
}

function renderSystem(s) {
  const y = s.system || {};
  const memory = y.memory_total ? bytes(y.memory_total - y.memory_available) + " of " + bytes(y.memory_total) : "–";
  const disk = y.disk_total ? bytes(y.disk_total - y.disk_free) + " of " + bytes(y.disk_total) : "–";
  facts($("system"), [
    ["CPU", fmt(y.cpu_percent, 0, "%") + (y.cpus ? " of " + y.cpus + " cores" : "")],
    ["load", y.load ? y.load.join(" ") : "–"],
    ["memory used", memory],
    ["gateway process", bytes(y.process_rss)],
    ["disk used (data)", disk],
    ["machine up", ago(y.uptime_s)],
    ["SoC temperature", fmt(y.soc_temperature, 1, "°C")],
  ]);
}

// -- plots ---------------------------------------------------------------------------------------

function select(device, byUser) {
  if (byUser) view.chosen = true;
  if (device === view.selected) return;
  view.selected = device;
  $("device-select").value = device;
  for (const tr of $("devices").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.device === device);
  drawPlots();
  fetchHistory(device);
}

async function fetchHistory(device) {
  view.fetching = device;
  try {
    const response = await fetch("/api/history/" + encodeURIComponent(device), {cache: "no-store"});
    if (!response.ok) return;
    const h = await response.json();
    const had = view.history.get(device);
    // what live updates brought while the request was out is kept (points are ordered by seq)
    const newer = had ? had.points.filter((p) => p[1] > h.last_seq) : [];
    const newerTrack = had ? had.track.filter((p) => p[1] > h.last_seq) : [];
    view.history.set(device, {points: h.points.concat(newer).slice(-MAX_POINTS),
      track: h.track.concat(newerTrack).slice(-MAX_POINTS)});
  } catch (e) {
    return;
  } finally {
    if (view.fetching === device) view.fetching = null;
  }
  if (device === view.selected) { drawPlots(); renderRecords(); }
}

function merge(news) {
  for (const [device, add] of Object.entries(news || {})) {
    const h = view.history.get(device);
    if (!h) continue; // never shown: fetched in full when selected
    const last = h.points.length ? h.points[h.points.length - 1][1] : 0;
    const lastPos = h.track.length ? h.track[h.track.length - 1][1] : 0;
    h.points.push(...add.points.filter((p) => p[1] > last));
    h.track.push(...add.track.filter((p) => p[1] > lastPos));
    if (h.points.length > MAX_POINTS) h.points.splice(0, h.points.length - MAX_POINTS);
    if (h.track.length > MAX_POINTS) h.track.splice(0, h.track.length - MAX_POINTS);
  }
}

function drawPlots() {
  const h = view.history.get(view.selected) || {points: [], track: []};
  const box = $("plots");
  if (box.children.length !== PLOTS.length) {
    box.replaceChildren(...PLOTS.map((p) => el("figure", {class: "plot", id: "plot-" + p.key},
      el("figcaption", {}, el("span", {text: p.label}), " ", el("strong", {class: "value"}),
        " ", el("span", {class: "range muted"})),
      svg("svg", {viewBox: "0 0 300 100", preserveAspectRatio: "none", role: "img", "aria-label": p.label}))));
  }
  for (const p of PLOTS) drawSeries(p, h.points);
  drawTrack(h.track);
}

function drawSeries(plot, points) {
  const figure = $("plot-" + plot.key);
  const chart = figure.querySelector("svg");
  const values = points.filter((p) => p[plot.index] !== null && p[plot.index] !== undefined);
  chart.dataset.points = String(values.length);
  const value = figure.querySelector(".value");
  const range = figure.querySelector(".range");
  if (!values.length) {
    chart.replaceChildren(svgText("no data"));
    value.textContent = "";
    range.textContent = "";
    return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const p of values) { lo = Math.min(lo, p[plot.index]); hi = Math.max(hi, p[plot.index]); }
  const pad = (hi - lo) * 0.1 || Math.max(Math.abs(hi) * 0.01, 0.5);
  const y0 = lo - pad, y1 = hi + pad;
  const t0 = values[0][0], t1 = values[values.length - 1][0];
  const x = (t) => t1 > t0 ? 4 + 292 * (t - t0) / (t1 - t0) : 150;
  const y = (v) => 96 - 92 * (v - y0) / (y1 - y0);
  const path = values.map((p, i) => (i ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[plot.index]).toFixed(1)).join("");
  const grid = [0.25, 0.5, 0.75].map((f) => svg("line", {x1: 0, x2: 300, y1: 100 * f, y2: 100 * f, class: "grid"}));
  const last = values[values.length - 1];
  chart.replaceChildren(...grid,
    svg("path", {d: path, class: "line " + plot.key, "vector-effect": "non-scaling-stroke"}),
    svg("circle", {cx: x(last[0]), cy: y(last[plot.index]), r: 2.5, class: "dot " + plot.key}));
  value.textContent = fmt(last[plot.index], plot.digits, plot.unit);
  range.textContent = fmt(lo, plot.digits) + "–" + fmt(hi, plot.digits) + " · " + clock(t0) + "–" + clock(t1) +
    " · " + values.length + " pts";
}

function svgText(text) {
  const t = svg("text", {x: 150, y: 55, "text-anchor": "middle", class: "nodata"});
  t.textContent = text;
  return t;
}

function drawTrack(track) {
  const chart = $("track");
  chart.dataset.points = String(track.length);
  if (!track.length) {
    chart.replaceChildren(svgText("no GPS fix"));
    $("track-caption").textContent = "";
    return;
  }
  let la0 = Infinity, la1 = -Infinity, lo0 = Infinity, lo1 = -Infinity;
  for (const p of track) {
    la0 = Math.min(la0, p[2]); la1 = Math.max(la1, p[2]);
    lo0 = Math.min(lo0, p[3]); lo1 = Math.max(lo1, p[3]);
  }
  // equirectangular, metres alike on both axes at this latitude; a margin, and a least span of ~100 m
  const k = Math.cos((la0 + la1) / 2 * Math.PI / 180) || 1e-6;
  let w = Math.max((lo1 - lo0) * k, 0.001), hgt = Math.max(la1 - la0, 0.001);
  const scale = Math.min(280 / w, 180 / hgt);
  const cx = (lo0 + lo1) / 2, cy = (la0 + la1) / 2;
  const x = (lon) => 150 + (lon - cx) * k * scale;
  const y = (lat) => 100 - (lat - cy) * scale;
  const path = track.map((p, i) => (i ? "L" : "M") + x(p[3]).toFixed(1) + " " + y(p[2]).toFixed(1)).join("");
  const first = track[0], last = track[track.length - 1];
  chart.replaceChildren(
    svg("rect", {x: 0, y: 0, width: 300, height: 200, class: "track-bg"}),
    svg("path", {d: path, class: "track", "vector-effect": "non-scaling-stroke"}),
    svg("circle", {cx: x(first[3]), cy: y(first[2]), r: 3, class: "start"}),
    svg("circle", {cx: x(last[3]), cy: y(last[2]), r: 4, class: "here"}));
  const across = Math.max((lo1 - lo0) * k, la1 - la0) * 111320; // metres per degree of latitude
  $("track-caption").textContent = fmt(last[2], 5) + ", " + fmt(last[3], 5) + " · " + track.length + " fixes · " +
    (across >= 2000 ? fmt(across / 1000, 1, "km") : fmt(across, 0, "m")) + " across";
}

function recordState(seq) {
  const b = view.state ? view.state.buffer : null;
  if (!b) return "–";
  if (b.anchored_upto !== null && seq <= b.anchored_upto) return "anchored";
  if (b.processed_upto !== null && seq <= b.processed_upto) return "processed";
  return "accepted";
}

function renderRecords() {
  const h = view.history.get(view.selected);
  const recent = h ? h.points.slice(-8).reverse() : [];
  table($("records").tBodies[0], recent, (p) => p[1], (p) => [
    p[1],
    clock(p[0]),
    recordState(p[1]),
    {sig: "p:" + p[1], make: () => el("button", {type: "button", class: "link", onclick: () => showProof(p[1]),
      text: "proof"})},
  ], "no readings yet");
}

// -- proofs --------------------------------------------------------------------------------------

async function showProof(seq) {
  $("proof-seq").value = seq;
  const box = $("proof"), summary = $("proof-summary"), json = $("proof-json");
  box.hidden = false;
  summary.textContent = "record " + seq + ": asking…";
  json.textContent = "";
  try {
    const response = await fetch("/api/proof/" + encodeURIComponent(seq), {cache: "no-store"});
    const body = await response.json();
    if (!response.ok) {
      summary.textContent = "record " + seq + ": no proof (" + (body.error || response.status) + "): " + (body.detail || "");
      return;
    }
    const anchor = body.anchor ? "anchored in block " + body.anchor.block + ", tx " + body.anchor.tx : "sealed, not anchored yet";
    summary.textContent = "record " + seq + " · batch " + body.batch.sequence + " · root " + body.root + " · " + anchor;
    json.textContent = JSON.stringify(body, null, 1);
  } catch (e) {
    summary.textContent = "record " + seq + ": the gateway did not answer";
  }
  box.scrollIntoView({block: "nearest"});
}

// -- live updates ------------------------------------------------------------------------------

function live(on, text) {
  const badge = $("live");
  badge.className = "badge " + (on ? "on" : "off");
  badge.textContent = text;
}

let retry = null;

function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (event) => {
    const data = JSON.parse(event.data);
    view.state = data.state;
    view.upto = data.upto;
    view.history.clear(); // (re)connected: updates may have been missed, histories are fetched again
    live(true, "live");
    render();
    if (view.selected && view.fetching !== view.selected) fetchHistory(view.selected);
  });
  source.addEventListener("update", (event) => {
    const data = JSON.parse(event.data);
    view.state = data.state;
    if (data.after > view.upto) { // updates were missed: the selected device is fetched again
      view.history.clear();
      if (view.selected) fetchHistory(view.selected);
    } else {
      merge(data.new);
    }
    view.upto = data.upto;
    live(true, "live");
    render();
    if (view.selected && data.new && data.new[view.selected]) drawPlots();
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) { // refused (503: too many pages open): try later
      live(false, "offline");
      clearTimeout(retry);
      retry = setTimeout(connect, 10000);
    } else {
      live(false, "reconnecting");
    }
  };
}

document.addEventListener("DOMContentLoaded", () => {
  $("device-select").addEventListener("change", (e) => select(e.target.value, true));
  $("proof-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const seq = parseInt($("proof-seq").value, 10);
    if (seq > 0) showProof(seq);
  });
  drawPlots();
  connect();
});
