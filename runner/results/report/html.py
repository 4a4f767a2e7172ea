"""The HTML report's data: runs compared item by item (docs/results.md, "Scoring and reports";
docs/report.md). The page itself (CSS + JS) is in `page.py`.

A report of at most `chunk` items is one self-contained file: rows and thumbnails (data: URLs)
inline. A bigger one is a folder that works from file:// with no server: `index.html` holds
the run header and one flag character per item (so the switches filter every item at once),
`c/<k>.js` the rows in chunks loaded as the pages need them (all of them for a text search),
`f/<k>.js` the full text of outputs cut in the table, `t/` one thumbnail per distinct image
(hard links into the store's thumbnail cache when it can).
"""

from __future__ import annotations

import html
import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runner.files import atomic_write, data_url
from runner.plan.sources import image_base
from runner.results.card.compare import compare_runs, item_samples
from runner.results.judging.judged import judgements_by_key
from runner.results.plot.charts import card_result, charts
from runner.results.report.figures import charts_html, comparison_html
from runner.results.report.page import TEMPLATE
from runner.results.report.thumbs import cache_key, thumbnails
from runner.results.runs.load import Ref, Run, config_diff, flatten, load_run
from runner.results.scoring.score import set_file_of
from runner.store.record import Record, counts

CHUNK = 2000  # rows per chunk file; a report of at most this many items is one file
PAGE = 100  # rows per page
CUT = 2000  # characters of an output in the table; the rest loads on click
WRONG, DIFFER, FLIP = 1, 2, 4  # bits of an item's flag character: the page's switches


def earlier_turns(set_file: Path | None) -> dict[str, list[list[str]]]:
    """Item id -> the turns before its last user message ([role, text], images left out), for
    multi-turn items only: the report shows them collapsed above the question. {} when the set
    is gone or unreadable (the report still shows the last question)."""
    if set_file is None:
        return {}
    try:
        from runner.plan.sources import read_set

        _, specs = read_set(Path(set_file))
        out = {}
        for s in specs:
            last = max((k for k, (role, _) in enumerate(s.turns) if role == "user"), default=0)
            if last:
                out[s.id] = [[role, " ".join(v for kind, v in parts if kind == "text")]
                             for role, parts in s.turns[:last] if role != "system"]
        return out
    except Exception:  # noqa: BLE001 - an edited or moved set: no earlier turns shown
        return {}


def _judged(js: list[dict[str, Any]]) -> list[list[Any]]:
    """[judge name, rating or None, status, the judgement cut at CUT] per judge configuration."""
    return [[x["judge_name"], x.get("rating"), x["status"],
             str(x.get("judgement") or x.get("reason") or "")[:CUT]] for x in js]


def _mark(run: Run, rec: Record | None, scorers: set[str],
          judged: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any] | None:
    """One run's cell, its output cut at CUT characters (`full` says how long it is)."""
    if rec is None:
        return None
    s = run.scores.get(rec["key"])
    ok = rec.get("status") == "ok"
    t = str(rec.get("output") or "") if ok else f"error: {rec.get('error', '')}"
    o: dict[str, Any] = {"t": t[:CUT]}
    if len(t) > CUT:
        o["full"] = len(t)
    if not ok:
        o["err"] = 1
    if s is not None:
        o |= {"ok": bool(s["correct"]), "why": s.get("reason", "")}
        if len(scorers) > 1:  # one scorer for the whole run is named in the header
            o["sc"] = s.get("scorer")
    if rec.get("finish_reason") == "length":
        o["cut"] = 1
    if len(rec.get("outputs") or []) > 1:  # sampling.n > 1: the first is shown and scored
        o["more"] = len(rec["outputs"]) - 1
    if judged and rec["key"] in judged:
        o["jd"] = _judged(judged[rec["key"]])
    return o


def _text(rec: Record | None) -> str | None:
    if rec is None:
        return None
    return str(rec.get("output") or "") if rec.get("status") == "ok" else "\0error"


def _run_info(run: Run, keys: list[str], scorers: set[str]) -> dict[str, Any]:
    flat = flatten(run.config)
    m = run.metrics
    tps = m.get("completion_tokens_per_s") or \
        (run.manifest.get("throughput") or {}).get("completion_tokens_per_s")
    return {"label": run.hash, "model": flat.get("model.name", "?"),
            "status": run.manifest.get("status", "?"), "items": len(run.items),
            "accuracy": m.get("accuracy"), "scored": m.get("scored"),
            "errors": counts(run.items.values()).errors_label, "tps": tps,
            "scorer": ", ".join(sorted(scorers)),
            "by_tag": {t: v.get("accuracy") for t, v in (m.get("by_tag") or {}).items()},
            "diff": [json.dumps(flat[k], default=str) if k in flat else "—" for k in keys]}


def _hrefs(files: dict[str, str], base: Path) -> dict[str, str]:
    """Relative URLs from the report's folder to files (they work from file://). Plain
    string paths: pathlib's resolve() per image was most of a 100k-item rebuild."""
    b = str(base.resolve())
    rel: dict[str, str] = {}  # per folder: images share a few folders
    out = {}
    for n, f in files.items():
        d, name = os.path.split(f)
        if d not in rel:
            rel[d] = quote(os.path.relpath(d, b)) + "/"
        out[n] = rel[d] + quote(name)
    return out


def _comparison(runs: list[Run], info: list[dict[str, Any]]
                ) -> tuple[list[dict[str, Any]], set[str]]:
    """compare.py's numbers for the header (each run's interval and samples metrics into
    `info`; the base against each other run) and the ids of the items that flipped."""
    got = compare_runs(runs)
    for i, st in zip(info, got["runs"], strict=True):
        i |= {"n": st["n"], "ci95": st["ci95"], "samples": st.get("samples")}
    pairs = [{"other": p["other"], "n": p["n_paired"], "delta": p["delta"], "ci95": p["ci95"],
              "p": p["mcnemar_p"], "r2w": p["right_to_wrong"], "w2r": p["wrong_to_right"]}
             for p in got["pairs"]]
    return pairs, {i for p in got["pairs"] for ids in p["flips"].values() for i in ids}


class Report:
    """Rows, flags and images of runs compared item by item, ready to write."""

    def __init__(self, run_dirs: list[Path | Ref], cache: Path | None = None,
                 sweep_rows: list[dict[str, Any]] | None = None):
        self.runs = [load_run(d) for d in run_dirs]
        runs = self.runs
        card = card_result(runs)  # computed once: the comparison section and the card chart
        self.charts = comparison_html((card or {}).get("table")) + charts_html(
            charts(runs, sweep_rows, card or {}))  # from the aggregates only
        roots = {r.path: image_base(set_file_of(r.path)) for r in runs}
        roots = {k: str(v.resolve()) if v else None for k, v in roots.items()}  # str: fast
        scorers = [{s.get("scorer") or "?" for s in r.scores.values()} for r in runs]
        judged = [judgements_by_key(r.path) for r in runs]
        history = earlier_turns(set_file_of(runs[0].path))
        keys = config_diff([r.config for r in runs])
        self.info = [_run_info(r, keys, s) for r, s in zip(runs, scorers, strict=True)]
        self.keys = keys
        self.pairs, flipped = _comparison(runs, self.info)
        ids: dict[str, None] = {}  # every run's items, first run's order first
        for r in runs:
            ids |= dict.fromkeys(r.items)
        self.names: dict[str, str] = {}  # cache key -> short name in the report, in order
        self.originals: dict[str, str] = {}  # short name -> original file
        wanted: dict[str, str] = {}  # cache key -> original file
        self.rows: list[dict[str, Any]] = []
        # "<row>.<run>": an output cut in the table; "<row>.<run>.s": its samples (n > 1)
        self.full: dict[str, Any] = {}
        flags = []
        for n, i in enumerate(ids):
            recs = [r.items.get(i) for r in runs]
            k, first = next((k, x) for k, x in enumerate(recs) if x is not None)
            root = roots[runs[k].path]
            ims = []
            for im in first.get("images") or []:
                key = cache_key(str(im.get("sha256") or im["path"]))
                # not stat'ed: a cached thumbnail is enough, an unreadable file makes none
                f = os.path.join(root, im["path"]) if root else None
                if f is not None:
                    wanted[key] = f
                    name = self.names.setdefault(key, f"{len(self.names):x}")
                    self.originals.setdefault(name, f)
                    ims.append([name, im["path"]])
                else:
                    ims.append([None, im["path"]])
            x = first.get("expected")  # an object (the json scorer's) shown as JSON
            x = json.dumps(x, ensure_ascii=False) if isinstance(x, (dict, list)) else x
            marks = [_mark(r, rec, s, jd) for r, rec, s, jd in zip(runs, recs, scorers, judged,
                                                                  strict=True)]
            for j, (o, rec) in enumerate(zip(marks, recs, strict=True)):
                if o and "full" in o:
                    self.full[f"{n}.{j}"] = str(rec.get("output") or rec.get("error") or "")
                if o and "more" in o:
                    self.full[f"{n}.{j}.s"] = [[x["text"], x["correct"]]
                                               for x in item_samples(runs[j], i)]
            self.rows.append({"id": i, "p": first.get("prompt", ""), "x": x,
                              "tags": first.get("tags") or [], "im": ims, "o": marks,
                              **({"h": history[i]} if i in history else {})})
            wrong = any(o and o.get("ok") is False for o in marks)
            differ = len(runs) > 1 and len({_text(rec) for rec in recs}) > 1
            flags.append(chr(48 + WRONG * wrong + DIFFER * differ + FLIP * (i in flipped)))
        self.flags = "".join(flags)
        got = thumbnails(cache or self.runs[0].path.parent / ".cache" / "thumbs", wanted)
        self.thumbs = {self.names[k]: p for k, p in got.items() if p is not None}
        for r in self.rows:  # an unreadable original has no thumbnail: listed as missing
            r["im"] = [[n if n in self.thumbs else None, p] for n, p in r["im"]]

    def title(self) -> str:
        return html.escape("pixtral-runner report: " + ", ".join(r.hash for r in self.runs))

    def head(self, chunk: int) -> dict[str, Any]:
        return {"runs": self.info, "keys": self.keys, "n": len(self.rows), "chunk": chunk,
                "page": PAGE, "flags": self.flags, "cutAt": CUT, "pairs": self.pairs}


def _page(title: str, data: dict[str, Any], figures: str = "") -> str:
    blob = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c")  # nothing in the data can close the <script>
    head, rest = TEMPLATE.split("__CHARTS__")  # each filled once: no text of one is
    mid, tail = rest.split("__DATA__")  # read as the other's placeholder
    return head.replace("__TITLE__", title) + figures + mid + blob + tail


def _js(call: str, k: int, data: Any) -> str:
    return f"{call}({k},{json.dumps(data, ensure_ascii=False, separators=(',', ':'))});\n"


def write_single(rep: Report, out: Path, full_images: bool) -> Path:
    """One self-contained file: everything inline, each thumbnail once as a data: URL."""
    base = out.parent
    href = {} if full_images else _hrefs(rep.originals, base)
    for r in rep.rows:  # [name in D.thumbs, path, relative link to the original or null]
        r["im"] = [[n, p, href.get(n)] for n, p in r["im"]]
    data = rep.head(max(1, len(rep.rows))) | {
        "rows": rep.rows, "full": rep.full,
        "thumbs": {n: data_url(p) for n, p in rep.thumbs.items()},
        "orig": {n: data_url(rep.originals[n]) for n in rep.thumbs} if full_images else {}}
    base.mkdir(parents=True, exist_ok=True)
    atomic_write(out, _page(rep.title(), data, rep.charts))
    return out


def _link(src: str | Path, dest: str | Path) -> None:
    """A hard link (no bytes copied) where the filesystem allows one, else a copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def write_folder(rep: Report, folder: Path, chunk: int, full_images: bool) -> Path:
    """index.html + c/, f/, t/ (and i/ with --full-images), built beside and swapped in."""
    folder = folder.resolve()
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ["c", "f", "t"] + ["i"] * full_images:
        (tmp / d).mkdir(parents=True)
    try:
        names = {}  # thumbnail -> its file in t/
        tdir = str(tmp / "t")
        for n, p in rep.thumbs.items():
            names[n] = n + os.path.splitext(p)[1]
            _link(p, os.path.join(tdir, names[n]))
            if full_images:
                f = rep.originals[n]
                _link(f, tmp / "i" / f"{n}{os.path.splitext(f)[1]}")
        href = {n: f"i/{n}{quote(os.path.splitext(f)[1])}" for n, f in rep.originals.items()} \
            if full_images else _hrefs(rep.originals, folder)
        for r in rep.rows:  # [file in t/, path, link to the original]
            r["im"] = [[None, p, None] if n is None else [names[n], p, href[n]]
                       for n, p in r["im"]]
        for k in range(0, len(rep.rows), chunk):
            atomic_write(tmp / "c" / f"{k // chunk}.js",
                         _js("R", k // chunk, rep.rows[k:k + chunk]), sync=False)
        by_chunk: dict[int, dict[str, str]] = {}
        for key, t in rep.full.items():
            by_chunk.setdefault(int(key.split(".")[0]) // chunk, {})[key] = t
        for k, full in by_chunk.items():
            atomic_write(tmp / "f" / f"{k}.js", _js("F", k, full), sync=False)
        data = rep.head(chunk) | {"chunks": -(-len(rep.rows) // chunk)}
        atomic_write(tmp / "index.html", _page(rep.title(), data, rep.charts), sync=False)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder / "index.html"


def build_report(run_dirs: list[Path | Ref], out: Path, *, chunk: int = CHUNK,
                 full_images: bool = False, cache: Path | None = None,
                 sweep_rows: list[dict[str, Any]] | None = None) -> Path:
    """Write the report of `run_dirs` and return the page to open: `out` itself for a
    report of at most `chunk` items, else `<out without .html>/index.html`. Thumbnails are
    cached in `cache` (default: the store's `.cache/thumbs/`). `sweep_rows`: the sweep's
    runs.json, whose overrides name what the sweep chart plots against."""
    out = Path(out)
    rep = Report([d if isinstance(d, Ref) else Path(d) for d in run_dirs], cache, sweep_rows)
    if len(rep.rows) <= chunk:
        return write_single(rep, out, full_images)
    return write_folder(rep, out.with_suffix("") if out.suffix == ".html" else out, chunk,
                        full_images)


