"""One self-contained HTML page comparing runs item by item (README, "Scoring and reports").

Images are embedded once per distinct image (keyed by sha256) as small JPEG/PNG thumbnails in
data: URLs; rows travel as JSON and a few lines of plain JS render them 100 per page, so a
2,000-item set opens as fast as a 100-item one. No CDN, no server, no fetches.
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from runner.files import atomic_write
from runner.record import Record, counts
from runner.results.runs import Run, config_diff, flatten, load_run
from runner.results.score import read_set_meta, set_file_of

THUMB = 160  # px, longest side
PAGE = 100  # rows per page


def set_root(run: Run) -> Path | None:
    """Where the run's set resolves its image paths (None if the set is gone)."""
    return read_set_meta(set_file_of(run.path)).root


def thumbnail(file: Path) -> str | None:
    """A data: URL of a small thumbnail, or None if unreadable. PNG for few-colour images
    (charts, screenshots, line art: sharp and small), JPEG for photos."""
    try:
        with Image.open(file) as im:
            im.draft("RGB", (THUMB * 2, THUMB * 2))  # JPEG: decode at reduced scale (fast)
            im.thumbnail((THUMB, THUMB))
            alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            im = im.convert("RGBA" if alpha else "RGB")
    except (OSError, UnidentifiedImageError):
        return None
    buf = io.BytesIO()
    if alpha or im.getcolors(256) is not None:
        im.save(buf, "PNG")
        fmt = "png"
    else:
        im.save(buf, "JPEG", quality=75)
        fmt = "jpeg"
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _mark(run: Run, rec: Record | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    s = run.scores.get(rec["key"])
    o: dict[str, Any] = {"t": rec.get("output") if rec.get("status") == "ok"
                         else f"error: {rec.get('error', '')}", "st": rec.get("status")}
    if s is not None:
        o |= {"ok": bool(s["correct"]), "why": s.get("reason", ""), "sc": s.get("scorer")}
    if rec.get("finish_reason") == "length":
        o["cut"] = 1
    if len(rec.get("outputs") or []) > 1:  # sampling.n > 1: the first is shown and scored
        o["more"] = len(rec["outputs"]) - 1
    return o


def _run_info(run: Run, keys: list[str]) -> dict[str, Any]:
    flat = flatten(run.config)
    m = run.metrics
    tps = m.get("completion_tokens_per_s") or \
        (run.manifest.get("throughput") or {}).get("completion_tokens_per_s")
    return {"label": run.hash, "model": flat.get("model.name", "?"),
            "status": run.manifest.get("status", "?"), "items": len(run.items),
            "accuracy": m.get("accuracy"), "scored": m.get("scored"),
            "errors": counts(run.items.values()).errors_label, "tps": tps,
            "by_tag": {t: v.get("accuracy") for t, v in (m.get("by_tag") or {}).items()},
            "diff": [json.dumps(flat[k], default=str) if k in flat else "—" for k in keys]}


def build_report(run_dirs: list[Path], out: Path) -> Path:
    runs = [load_run(d) for d in run_dirs]
    roots = {r.path: set_root(r) for r in runs}
    keys = config_diff([r.config for r in runs])
    ids: dict[str, None] = {}  # every run's items, first run's order first
    for r in runs:
        ids |= dict.fromkeys(r.items)
    images: dict[str, str | None] = {}
    rows = []
    for i in ids:
        recs = [r.items.get(i) for r in runs]
        first = next(x for x in recs if x is not None)
        shas = []
        for im in first.get("images") or []:
            sha = im.get("sha256") or im["path"]
            if sha not in images:
                run = next(r for r, x in zip(runs, recs, strict=True) if x is first)
                root = roots[run.path]
                f = root / im["path"] if root else None
                images[sha] = thumbnail(f) if f else None
            shas.append([sha, im["path"]])
        x = first.get("expected")  # an object (the json scorer's) shown as JSON
        x = json.dumps(x, ensure_ascii=False) if isinstance(x, (dict, list)) else x
        rows.append({"id": i, "p": first.get("prompt", ""), "x": x,
                     "tags": first.get("tags") or [], "im": shas,
                     "o": [_mark(r, x) for r, x in zip(runs, recs, strict=True)]})
    data = {"runs": [_run_info(r, keys) for r in runs], "keys": keys, "rows": rows,
            "images": images, "page": PAGE}
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c")  # nothing in the data can close the <script>
    title = html.escape("pixtral-runner report: " + ", ".join(r.hash for r in runs))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, TEMPLATE.replace("__TITLE__", title).replace("__DATA__", blob))
    return out


# The page: CSS + plain JS; every string from the runs goes through textContent (no HTML).
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
img.th{max-width:160px;max-height:160px;display:block;margin-bottom:4px;cursor:zoom-in;
 border:1px solid #ddd}
img.th.big{max-width:none;max-height:none;width:480px}
.miss{font-size:11px;color:#c0262d}
</style></head>
<body>
<header><h1>__TITLE__</h1><table id="runs"></table></header>
<div id="bar"><span id="count"></span>
<button id="prev">&larr; prev</button><span id="pageinfo"></span>
<button id="next">next &rarr;</button>
<input id="q" type="search" placeholder="filter: id, prompt, output…">
<label><input id="wrong" type="checkbox"> only items some run got wrong</label>
<label><input id="differ" type="checkbox"> only items where runs differ</label></div>
<table id="items"><thead></thead><tbody></tbody></table>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const t0 = performance.now();
const D = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k);
  return e;
}
const pct = (x) => (x == null ? "—" : (100 * x).toFixed(1) + "%");
function header() {
  const T = $("runs"), R = D.runs;
  const row = (name, f) => T.append(el("tr", {}, el("th", {text: name}),
                                       ...R.map((r, i) => el("td", {}, f(r, i)))));
  row("run", (r) => el("b", {text: r.label}));
  row("model", (r) => r.model);
  row("accuracy", (r) => el("span", {class: "acc", text: pct(r.accuracy)}));
  row("items", (r) => `${r.items} items · ${r.scored ?? "—"} scored · ${r.errors} errors`);
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
function cell(o) {
  if (!o) return el("td", {class: "na", text: "not in this run"});
  const m = o.ok == null ? el("span", {class: "mark na", text: "–"})
    : el("span", {class: "mark " + (o.ok ? "ok" : "bad"), text: o.ok ? "✓" : "✗"});
  const td = el("td", {class: o.ok == null ? "" : (o.ok ? "okc" : "badc")},
                el("div", {class: "out"}, m, o.t ?? ""));
  if (o.why) td.append(el("div", {class: "why", text: `${o.sc}: ${o.why}`}));
  if (o.cut) td.append(el("div", {class: "cut", text: "(cut at max_tokens)"}));
  if (o.more) td.append(el("div", {class: "cut", text: `(+${o.more} more samples)`}));
  return td;
}
function img(sha, path) {
  const src = D.images[sha];
  if (!src) return el("div", {class: "miss", text: "missing: " + path});
  const i = el("img", {class: "th", alt: path, title: path});
  i.onload = () => { i.dataset.loaded = "1"; i.dataset.w = String(i.naturalWidth); };
  i.onerror = () => { i.dataset.loaded = "0"; };
  i.onclick = () => i.classList.toggle("big");
  i.src = src;
  return i;
}
let rows = D.rows, page = 0;
function filter() {
  const q = $("q").value.toLowerCase(), w = $("wrong").checked, d = $("differ").checked;
  rows = D.rows.filter((r) => {
    if (w && !r.o.some((o) => o && o.ok === false)) return false;
    if (d && new Set(r.o.map((o) => (o ? o.t : null))).size < 2) return false;
    if (!q) return true;
    return [r.id, r.p, r.x ?? "", ...r.o.map((o) => (o ? o.t : ""))].some(
      (s) => String(s).toLowerCase().includes(q));
  });
}
function render() {
  const pages = Math.max(1, Math.ceil(rows.length / D.page));
  page = Math.min(Math.max(page, 0), pages - 1);
  const body = el("tbody");
  rows.slice(page * D.page, (page + 1) * D.page).forEach((r, k) => {
    body.append(el("tr", {"data-id": r.id},
      el("td", {text: String(page * D.page + k + 1)}),
      el("td", {}, ...r.im.map(([s, p]) => img(s, p))),
      el("td", {}, el("div", {class: "id",
                              text: r.id + (r.tags.length ? " · " + r.tags.join(", ") : "")}),
         el("div", {text: r.p})),
      el("td", {text: r.x ?? "—"}),
      ...r.o.map(cell)));
  });
  document.querySelector("#items tbody").replaceWith(body);
  $("count").textContent = `${rows.length} of ${D.rows.length} items`;
  $("pageinfo").textContent = `page ${page + 1} / ${pages}`;
  $("prev").disabled = page === 0; $("next").disabled = page >= pages - 1;
  Object.assign(document.body.dataset, {rows: String(D.rows.length), page: String(page + 1),
                                        pages: String(pages)});
}
function go(p) { page = p; history.replaceState(null, "", "#page=" + (page + 1)); render(); }
$("prev").onclick = () => go(page - 1);
$("next").onclick = () => go(page + 1);
for (const id of ["q", "wrong", "differ"]) {
  $(id).addEventListener("input", () => { filter(); go(0); });
}
header();
page = (parseInt((location.hash.match(/page=(\\d+)/) || [])[1] || "1", 10) || 1) - 1;
render();
document.body.dataset.renderMs = (performance.now() - t0).toFixed(1);  // parse + first page
addEventListener("load", () => {  // thumbnails decoded too
  const nav = performance.getEntriesByType("navigation")[0];
  Object.assign(document.body.dataset, {loadMs: performance.now().toFixed(1),
                                        domMs: nav ? nav.domInteractive.toFixed(1) : ""});
});
</script></body></html>
"""


def main(argv: list[str] | None = None) -> int:
    """`python -m runner.html_report ...` = `python -m runner.results report ...`."""
    from runner.results.cli import main as cli

    return cli(["report", *(sys.argv[1:] if argv is None else argv)])
