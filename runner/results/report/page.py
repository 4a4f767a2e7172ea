"""The report page: CSS and plain JS, no CDN, nothing fetched (scripts are loaded with
<script src>, which works from file://). Every string from the runs goes through textContent.

The data (`D`, from html.py) has the run header and one flag character per item; the rows are
in `D.rows` (one-file report) or in chunk scripts `c/<k>.js` calling R(k, rows). Filtering
walks the flags of every item (the switches) and, for a text filter, every chunk (loaded
once); a page then loads only the chunks its rows are in. The URL hash keeps the state:
#page=3&q=cat&wrong=1&differ=1&flips=1.
"""

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#f6f6f8}
header{padding:12px 16px;background:#fff;border-bottom:1px solid #ddd}
h1{font-size:18px;margin:0 0 8px}
table{border-collapse:collapse}
#runs td,#runs th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;
 vertical-align:top;font-variant-numeric:tabular-nums}
#runs th{color:#555;font-weight:600}
.acc{font-size:20px;font-weight:700}
.tags{color:#666;font-size:12px}
#runs th.cfg{padding-top:10px;color:#888;font-weight:400;font-style:italic}
#bar{position:sticky;top:0;z-index:2;background:#fff;padding:8px 16px;border-bottom:1px solid #ddd;
 display:flex;gap:12px;align-items:center;flex-wrap:wrap}
#bar input[type=search]{width:18em}
#busy{color:#a60}
#items{width:100%;table-layout:fixed;background:#fff}
#items th{position:sticky;top:45px;background:#fafafa;z-index:1;text-align:left;padding:6px;
 border-bottom:2px solid #ccc}
#items td{padding:6px;border-bottom:1px solid #e5e5e5;vertical-align:top;overflow-wrap:anywhere}
.c-n{width:3em}.c-im{width:176px}.c-x{width:9em}
.id{font-weight:600;font-size:12px;color:#555}
.out{white-space:pre-wrap;max-height:11em;overflow:auto;font-size:13px}
.mark{font-weight:700;margin-right:4px}.ok{color:#0a7d32}.bad{color:#c0262d}.na{color:#999}
td.okc{background:#f0faf3}td.badc{background:#fdf2f2}
.why,.cut{font-size:11px;color:#777}
a.more{font-size:11px;cursor:pointer;color:#06c}
ol.samples{margin:4px 0;padding-left:1.6em;font-size:12px;white-space:pre-wrap}
img.th{max-width:160px;max-height:160px;display:block;margin-bottom:4px;cursor:zoom-in;
 border:1px solid #ddd}
.miss{font-size:11px;color:#c0262d}
#lb{position:fixed;inset:0;z-index:9;background:rgba(0,0,0,.8);display:flex;
 flex-direction:column;align-items:center;justify-content:center;cursor:zoom-out}
#lb[hidden]{display:none}
#charts{display:flex;flex-wrap:wrap;gap:16px;margin-top:12px}
#comparison{margin-top:12px}#comparison caption{text-align:left;font-weight:600}
#comparison td{vertical-align:top;border-top:1px solid #eee}
#comparison .notes{font-size:12px;color:#555}
figure.chart{margin:0;width:min(480px,100%)}
figure.chart svg{width:100%;height:auto}
figure.chart figcaption{font-size:12px;color:#555}
table.nums td,table.nums th{padding:1px 6px;font-size:12px;text-align:left;
 font-variant-numeric:tabular-nums}
#lb img{max-width:95vw;max-height:90vh;background:#fff}
#lb div{color:#eee;margin-top:6px;font-size:12px}
</style></head>
<body>
<header><h1>__TITLE__</h1><table id="runs"></table>__CHARTS__</header>
<div id="bar"><span id="count"></span>
<button id="prev">&larr; prev</button><span id="pageinfo"></span>
<button id="next">next &rarr;</button>
<input id="q" type="search" placeholder="filter: id, prompt, output…">
<label><input id="wrong" type="checkbox"> only items some run got wrong</label>
<label><input id="differ" type="checkbox"> only items where runs differ</label>
<label id="flipsl" hidden><input id="flips" type="checkbox"> only flips</label>
<span id="busy"></span></div>
<table id="items"><thead></thead><tbody></tbody></table>
<div id="lb" hidden><img id="lbimg" alt=""><div id="lbcap"></div></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const t0 = performance.now();
const D = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const SWITCHES = {wrong: 1, differ: 2, flips: 4};
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}
const pct = (x) => (x == null ? "—" : (100 * x).toFixed(1) + "%");
const pts = (x) => (x < 0 ? "−" : "+") + Math.abs(100 * x).toFixed(1);
const mark = (ok) => (ok == null ? el("span", {class: "mark na", text: "–"})
  : el("span", {class: "mark " + (ok ? "ok" : "bad"), text: ok ? "✓" : "✗"}));

// ---- data: chunks of rows, loaded once each ----
const C = D.rows ? [D.rows] : [], P = {}, FULL = D.full || {};
window.R = (k, rows) => { C[k] = rows; };
window.F = (k, m) => { Object.assign(FULL, m); };
function script(src) {
  return new Promise((ok, bad) => {
    const s = el("script", {src});
    s.onload = ok; s.onerror = () => bad(new Error("cannot load " + src));
    document.head.append(s);
  });
}
function chunk(k) {
  if (C[k]) return Promise.resolve(C[k]);
  if (!P[k]) P[k] = script(`c/${k}.js`).then(() => { loaded(); return C[k]; });
  return P[k];
}
function loaded() { document.body.dataset.chunksLoaded = String(C.filter(Boolean).length); }
async function rowsAt(idx) {
  await Promise.all([...new Set(idx.map((i) => Math.floor(i / D.chunk)))].map(chunk));
  return idx.map((i) => C[Math.floor(i / D.chunk)][i % D.chunk]);
}
function fullText(i, j, what = "") {  // what: "" the output, ".s" its samples
  const key = `${i}.${j}${what}`;
  if (key in FULL || D.rows) return Promise.resolve(FULL[key]);
  return script(`f/${Math.floor(i / D.chunk)}.js`).then(() => FULL[key]);
}

// ---- the page ----
function header() {
  const T = $("runs"), R = D.runs;
  const row = (name, f) => T.append(el("tr", {}, el("th", {text: name}),
                                       ...R.map((r, i) => el("td", {}, f(r, i)))));
  row("run", (r) => el("b", {text: r.label}));
  row("model", (r) => r.model);
  row("accuracy", (r) => el("span", {class: "acc", text: pct(r.accuracy)}));
  row("95% interval", (r) => (r.ci95 ? `${pct(r.ci95[0])} – ${pct(r.ci95[1])} (Wilson, ` +
                              `${r.n} scored)` : "—"));
  if (R.some((r) => r.samples)) {
    row("samples", (r) => (r.samples ? `n ${r.samples.n} · pass@1 ${pct(r.samples["pass@1"])}` +
      ` · pass@n ${pct(r.samples["pass@n"])} · majority ${pct(r.samples.majority)}` +
      ` · agreement ${pct(r.samples.agreement)}` : "—"));
  }
  if (D.pairs.length) {
    $("flipsl").hidden = false;
    row(`vs ${R[0].label} (paired)`, (r, i) => (i === 0 ? "base" : pair(D.pairs[i - 1])));
  }
  row("items", (r) => `${r.items} items · ${r.scored ?? "—"} scored · ${r.errors} errors`);
  row("scorer", (r) => r.scorer || "—");
  row("generated tok/s", (r) => (r.tps == null ? "—" : String(r.tps)));
  row("by tag", (r) => el("span", {class: "tags", text: Object.entries(r.by_tag)
                           .map(([t, a]) => `${t} ${pct(a)}`).join(" · ") || "—"}));
  if (D.keys.length) {
    T.append(el("tr", {}, el("th", {colspan: String(R.length + 1), class: "cfg",
                                    text: "config: the keys that differ between runs"})));
  }
  D.keys.forEach((k, j) => row(k, (r) => el("code", {text: r.diff[j]})));
  const h = el("tr", {}, el("th", {class: "c-n", text: "#"}),
               el("th", {class: "c-im", text: "images"}),
               el("th", {text: "prompt"}), el("th", {class: "c-x", text: "expected"}),
               ...R.map((r) => el("th", {class: "run", text: r.label})));
  document.querySelector("#items thead").append(h);
}
function pair(p) {  // other against the base, from compare.py
  if (p.delta == null) return "no items scored in both";
  const sig = p.p == null ? "no McNemar p (partial scores): see the interval"
    : `McNemar p ${p.p < 0.001 ? "< 0.001" : p.p.toFixed(3)}`;
  return el("span", {class: "pair", text: `Δ ${pts(p.delta)} pts [${pts(p.ci95[0])}, ` +
    `${pts(p.ci95[1])}] · ${sig} · flips: ${p.r2w} right→wrong, ${p.w2r} wrong→right ` +
    `(${p.n} paired)`});
}
function cell(o, i, j) {
  if (!o) return el("td", {class: "na", text: "not in this run"});
  const m = mark(o.ok);
  const out = el("div", {class: "out"}, m, o.t ?? "");
  const td = el("td", {class: o.ok == null ? "" : (o.ok ? "okc" : "badc")}, out);
  if (o.full) {
    const a = el("a", {class: "more", text: `… show all ${o.full} characters`});
    a.onclick = async () => { out.replaceChildren(m, await fullText(i, j)); a.remove(); };
    td.append(a);
  }
  if (o.why) td.append(el("div", {class: "why", text: o.sc ? `${o.sc}: ${o.why}` : o.why}));
  if (o.cut) td.append(el("div", {class: "cut", text: "(cut at max_tokens)"}));
  for (const [name, rating, status, text] of o.jd || []) {  // LLM judges (docs/judges.md)
    td.append(el("details", {class: "judge"},
      el("summary", {text: `judge ${name}: ${rating ?? status}`}), el("div", {text})));
  }
  if (o.more) {  // sampling.n > 1: the first sample is shown, every one on demand
    const a = el("a", {class: "more", text: `show all ${o.more + 1} samples`});
    a.onclick = async () => {
      const s = await fullText(i, j, ".s");
      td.append(el("ol", {class: "samples"}, ...s.map(([t, ok]) => el("li", {}, mark(ok), t))));
      a.remove();
    };
    td.append(el("div", {}, a));
  }
  return td;
}
function img([name, path, href]) {
  if (!name) return el("div", {class: "miss", text: "missing: " + path});
  const i = el("img", {class: "th", alt: path, title: path});
  i.onload = () => { i.dataset.loaded = "1"; i.dataset.w = String(i.naturalWidth); };
  i.onerror = () => { i.dataset.loaded = "0"; };
  i.onclick = () => zoom(href || (D.orig || {})[name] || i.src, path);
  i.src = D.thumbs ? D.thumbs[name] : "t/" + name;
  return i;
}
function zoom(src, path) {
  const im = $("lbimg");
  delete im.dataset.loaded;
  im.onload = () => { im.dataset.loaded = "1"; im.dataset.w = String(im.naturalWidth); };
  im.onerror = () => { im.dataset.loaded = "0"; };
  im.src = src; $("lbcap").textContent = path; $("lb").hidden = false;
}
$("lb").onclick = () => { $("lb").hidden = true; };

// ---- filters over every item: the flags for the switches, every chunk for the text ----
let sel = [], page = 0, gen = 0;
function matches(r, q) {
  return [r.id, r.p, r.x ?? "", ...r.o.map((o) => (o ? o.t : ""))].some(
    (s) => String(s).toLowerCase().includes(q));
}
async function filter() {
  const my = ++gen, q = $("q").value.toLowerCase();
  let mask = 0;
  for (const [id, bit] of Object.entries(SWITCHES)) if ($(id).checked) mask |= bit;
  let idx = [];
  for (let i = 0; i < D.n; i++) {
    if (((D.flags.charCodeAt(i) - 48) & mask) === mask) idx.push(i);
  }
  if (q) {
    const n = Math.ceil(D.n / D.chunk);
    $("busy").textContent = n > 1 ? `searching ${n} chunks…` : "";
    await Promise.all(Array.from({length: n}, (_, k) => chunk(k)));
    if (my !== gen) return false;
    idx = idx.filter((i) => matches(C[Math.floor(i / D.chunk)][i % D.chunk], q));
    $("busy").textContent = "";
  }
  if (my !== gen) return false;
  sel = idx;
  return true;
}
async function render() {
  const my = gen, pages = Math.max(1, Math.ceil(sel.length / D.page));
  page = Math.min(Math.max(page, 0), pages - 1);
  const at = sel.slice(page * D.page, (page + 1) * D.page);
  const rows = await rowsAt(at);
  if (my !== gen) return;
  const body = el("tbody");
  rows.forEach((r, k) => {
    body.append(el("tr", {"data-id": r.id},
      el("td", {text: String(at[k] + 1)}),
      el("td", {}, ...r.im.map(img)),
      el("td", {}, el("div", {class: "id",
                              text: r.id + (r.tags.length ? " · " + r.tags.join(", ") : "")}),
         r.h ? el("details", {class: "turns"},
                  el("summary", {text: `${r.h.length} earlier turns`}),
                  ...r.h.map(([role, t]) => el("div", {class: "why", text: `${role}: ${t}`})))
           : null,
         el("div", {text: r.p})),
      el("td", {text: r.x ?? "—"}),
      ...r.o.map((o, j) => cell(o, at[k], j))));
  });
  document.querySelector("#items tbody").replaceWith(body);
  $("count").textContent = `${sel.length} of ${D.n} items`;
  $("pageinfo").textContent = `page ${page + 1} / ${pages}`;
  $("prev").disabled = page === 0; $("next").disabled = page >= pages - 1;
  Object.assign(document.body.dataset, {rows: String(D.n), matches: String(sel.length),
                                        page: String(page + 1), pages: String(pages)});
  return body;
}
function state() {
  const h = new URLSearchParams();
  if (page) h.set("page", String(page + 1));
  if ($("q").value) h.set("q", $("q").value);
  for (const id of Object.keys(SWITCHES)) if ($(id).checked) h.set(id, "1");
  history.replaceState(null, "", "#" + h.toString());
}
function go(p) { page = p; state(); return render(); }
$("prev").onclick = () => go(page - 1);
$("next").onclick = () => go(page + 1);
async function refilter() { if (await filter()) { page = 0; state(); await render(); } }
for (const id of ["q", ...Object.keys(SWITCHES)]) $(id).addEventListener("input", refilter);

async function start() {
  header();
  loaded();
  const h = new URLSearchParams(location.hash.slice(1));
  $("q").value = h.get("q") || "";
  for (const id of Object.keys(SWITCHES)) $(id).checked = h.get(id) === "1";
  await filter();
  page = (parseInt(h.get("page") || "1", 10) || 1) - 1;
  const body = await render();
  document.body.dataset.renderMs = (performance.now() - t0).toFixed(1);  // rows in the DOM
  const ims = [...body.querySelectorAll("img")];  // then the page's thumbnails decoded
  await Promise.all(ims.map((i) => (i.complete ? null : new Promise((ok) => {
    i.addEventListener("load", ok); i.addEventListener("error", ok);
  }))));
  requestAnimationFrame(() => {
    document.body.dataset.firstMs = performance.now().toFixed(1);
  });
}
start().catch((e) => { $("busy").textContent = String(e); document.body.dataset.error = "1"; });
</script></body></html>
"""
