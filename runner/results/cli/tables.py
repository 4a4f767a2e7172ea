"""How `python -m runner.results` shows runs in the terminal: values, outputs, a run's
stats, `compare`'s tables (rich renderables; the commands print them)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from runner.kinds import kinds_text
from runner.results.runs.load import ABSENT, Run
from runner.store.record import counts

# Piped output is not cut to 80 columns: hashes and ids must stay whole for grep.
out = Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ
              else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)



def fmt(v: Any) -> str:
    if v is ABSENT:
        return "—"
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def item_text(r: dict[str, Any] | None, limit: int) -> Text:
    if r is None:
        return Text("—", style="dim")
    if r.get("status") == "error":
        return Text(f"error: {r.get('error')}", style="red")
    s = str(r.get("output", ""))
    return Text(s if limit <= 0 or len(s) <= limit else s[:limit] + "…")


def kv_table(title: str) -> Table:
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    return t

def stats_table(run: Run) -> Table:
    m = run.manifest
    t = kv_table(f"run {run.hash} · {run.model} · {m.get('prompts', '?')}")
    last, tok = m.get("counts") or {}, m.get("tokens") or {}
    c = counts(run.items.values())
    v = run.view
    planned = v.n if v else last.get("planned", "?")
    rows = [("status", m.get("status", "no manifest")), ("folder", str(run.path)),
            ("created", m.get("created")), ("finished", m.get("finished")),
            ("view", view_text(run)),
            ("items", f"{c.stored} stored ({c.errors} errors"
                      + (f": {kinds_text(c.by_kind)}" if c.by_kind else "")
                      + f") of {planned} planned; last invocation computed "
                      f"{last.get('computed', '?')}"),
            ("source", source_text(v.source) if v else None),
            ("tokens", f"{c.prompt_tokens} prompt · {c.completion_tokens} "
                       f"generated (last invocation: {tok.get('prompt', '?')} · "
                       f"{tok.get('completion', '?')})"),
            ("timings", " · ".join(f"{k} {v}" for k, v in (m.get("timings") or {}).items())),
            ("throughput", " · ".join(f"{k} {v}" for k, v in (m.get("throughput") or {}).items())),
            ("overrides", " ".join(run.overrides)),
            ("metrics", json.dumps(run.metrics) if run.metrics else None),
            ("error", m.get("error")),
            ("versions", " · ".join(v if " " in v else f"{k} {v}"
                                    for k, v in (m.get("versions") or {}).items() if v))]
    for k, v in rows:
        if v:
            t.add_row(k, Text(str(v)))
    return t

def view_text(run: Run) -> str:
    """Which items the figures cover: the view's id, n and key digest, and the others."""
    from runner.store.view import views

    others = [x for x in views(run.path) if not run.view or x != run.view.id]
    if run.view is None:
        return (f"every record in the folder (--all; views: {', '.join(others)})" if others
                else "every record in the folder (stored before views)")
    v = run.view
    return (f"{v.id}: {v.n} items planned by the latest config{' (a subset)' * v.subset}, "
            f"keys sha256 {v.digest[:16]}…" + (f"; other views: {', '.join(others)} "
                                                 f"(HASH@VIEW, or --all)" if others else ""))


def source_text(src: dict[str, Any]) -> str:
    """Where a view's items came from: the set file, and a benchmark's origin."""
    parts = [f"set {src.get('set')} ({src.get('file')})"]
    if src.get("benchmark"):
        ident = src.get("source_id") or {}
        rev = ident.get("revision") or ident.get("sha256") or "unresolved"
        proto = src.get("protocol") or {}
        parts.append(f"{src['benchmark']} from {src.get('source')} "
                     f"({'revision' if 'hub' in ident else 'sha256'} {str(rev)[:16]}), split "
                     f"{src.get('split')}: {src.get('rows_planned')} of "
                     f"{src.get('split_rows', '?')} rows; protocol {proto.get('harness')} "
                     f"({proto.get('repo')} {proto.get('path')}@{str(proto.get('commit'))[:12]})")
    if src.get("limit"):
        parts.append(f"prompts.limit={src['limit']}")
    return "; ".join(parts)


def num(x: float | None, signed: bool = False) -> str:
    return "—" if x is None else f"{x:+.3f}" if signed else f"{x:.3f}"


def ci_text(ci: list[float] | None, signed: bool = False) -> str:
    return "—" if not ci else f"[{num(ci[0], signed)}, {num(ci[1], signed)}]"


def compact_table(title: str, *cols: str) -> Table:
    """A compact table (fits 80 columns): hashes and intervals never wrap."""
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)
    for c in cols:
        t.add_column(c, no_wrap=c != "differs", overflow="fold",
                     justify="left" if c in ("run", "other", "differs") else "right")
    return t


def compare_tables(runs: list[Run], result: dict[str, Any], limit: int) -> list[Any]:
    """`compare`'s text view: the runs (with the config values that differ), their samples
    (sampling.n > 1), the pairs, and the ids of each pair's flips (at most `limit` per
    direction; 0: all)."""
    from runner.results.runs.load import config_diff, flatten

    keys = config_diff([r.config for r in runs])
    t = compact_table("runs (the first is the base)", "run", "n", "accuracy", "95% CI (Wilson)",
               *(["differs"] if keys else []))
    for run, s in zip(runs, result["runs"], strict=True):
        flat = flatten(run.config)
        t.add_row(*map(Text, [s["run"], str(s["n"]), num(s["accuracy"]), ci_text(s["ci95"]),
                              *([" ".join(f"{k}={fmt(flat.get(k, ABSENT))}" for k in keys)]
                                if keys else [])]))
    out: list[Any] = [t]
    if any("samples" in s for s in result["runs"]):
        m = compact_table("samples (sampling.n > 1)", "run", "n", "pass@1", "pass@n", "majority",
                   "agreement")
        for s in result["runs"]:
            x = s.get("samples") or {}
            m.add_row(s["run"], str(x.get("n", 1)), *(num(x.get(k)) for k in (
                "pass@1", "pass@n", "majority", "agreement")))
        out.append(m)
    p = compact_table("pairs: other minus base, on the items scored in both", "other", "paired",
               "delta", "95% CI (bootstrap)", "McNemar p", "r→w", "w→r")
    p.caption = "r→w: right in the base, wrong in the other; w→r: the reverse"
    p.caption_justify = "left"
    out.append(p)
    for q in result["pairs"]:
        p.add_row(*map(Text, (q["other"], str(q["n_paired"]), num(q["delta"], True),
                              ci_text(q["ci95"], True),
                              "—" if q["mcnemar_p"] is None else f"{q['mcnemar_p']:.3g}",
                              str(q["right_to_wrong"]), str(q["wrong_to_right"]))))
        if q.get("warning"):
            out.append(Text(f"{q['other']}: {q['warning']}", style="yellow"))
        for way, ids in q["flips"].items():
            if ids:
                shown = ids if limit <= 0 else ids[:limit]
                more = (f" … {len(ids) - len(shown)} more (--n 0: all)"
                        if len(shown) < len(ids) else "")
                out.append(Text(f"{q['other']} {way.replace('_to_', '→')} ({len(ids)}): "
                                + " ".join(shown) + more))
    return out


def expected_text(x: object) -> str:
    """An expected answer as text; an object (the json scorer's) as JSON."""
    return json.dumps(x, ensure_ascii=False) if isinstance(x, (dict, list)) else str(x or "")
