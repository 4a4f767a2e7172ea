"""`python -m runner.results [--root outputs] ls|show|diff|compare|export|rm|report|card|score`.

Reads the run folders (the source of truth, through `runs`) and the index (for `ls`).
Imports neither vLLM nor torch; Hydra only for `show`'s defaults. Every command names runs
the same way (a hash prefix or a run folder); errors are one sentence, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from runner.errors import UserError
from runner.files import LockBusy, atomic_write, locked
from runner.results.cli.evaluate import cmd_card, cmd_compare, cmd_judge, cmd_score, judged_line
from runner.results.cli.tables import err, expected_text, fmt, item_text, out, stats_table
from runner.results.runs import index
from runner.results.runs.export import export_text, openai_split
from runner.results.runs.load import (
    Run,
    dict_diff,
    load_run,
    named_runs,
    ref_of,
    resolve,
    sweep_dir,
)
from runner.results.scoring.stats import headline

STATUSES = ("running", "complete", "interrupted", "failed")


# ---- ls ---------------------------------------------------------------------------------


def cmd_ls(a: argparse.Namespace) -> None:
    if not a.root.is_dir():
        raise UserError(f"No store at {a.root}; pass --root (the runs' store.root).")
    con = index.sync(a.root)
    where, params = ["1"], []
    if a.model:
        where.append("instr(lower(model), lower(?)) > 0")
        params.append(a.model)
    if a.status:
        where.append("status = ?")
        params.append(a.status)
    if a.since:
        try:
            params.append(date.fromisoformat(a.since).isoformat())
        except ValueError:
            raise UserError(f"--since takes a date as YYYY-MM-DD, not '{a.since}'.") from None
        where.append("substr(created, 1, 10) >= ?")
    rows = [dict(r) for r in con.execute(
        f"SELECT * FROM runs WHERE {' AND '.join(where)} ORDER BY created DESC, hash", params)]
    con.close()
    if a.json:
        for r in rows:
            r["overrides"] = json.loads(r["overrides"] or "[]")
            r["metrics"] = json.loads(r["metrics"]) if r["metrics"] else None
            print(json.dumps({k: v for k, v in r.items() if k != "sig"}))
        return
    if not rows:
        out.print("No runs match." if len(where) > 1 else f"No runs in {a.root}.")
        return
    metric = any(r["metrics"] for r in rows)
    t = Table(caption=f"{len(rows)} run{'s' * (len(rows) != 1)} in {a.root}",
              caption_justify="left")
    for c in ("hash", "created", "status", "model", "prompts", "sampling", "items", "tokens",
              "tok/s") + (("metrics",) if metric else ()) + ("overrides",):
        t.add_column(c, no_wrap=c in ("hash", "created", "status"))
    style = {"complete": "green", "running": "cyan", "interrupted": "yellow"}
    for r in rows:
        sampling = (f"t={fmt(r['temperature'])} top_p={fmt(r['top_p'])} "
                    f"max={fmt(r['max_tokens'])} seed={fmt(r['seed'])} n={fmt(r['n'])}")
        items = f"{r['items_stored']}" + (f" ({r['items_errored']} err)"
                                          if r["items_errored"] else "")
        m = json.loads(r["metrics"]) if r["metrics"] else {}
        cells = [r["hash"], (r["created"] or "")[:16].replace("T", " "),
                 Text(r["status"] or "?", style=style.get(r["status"], "red")),
                 r["model"] or "?", r["prompts"] or "?", sampling, items,
                 f"{(r['prompt_tokens'] or 0) + (r['completion_tokens'] or 0)}",
                 "" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"]
        if metric:
            # the headline only; `show` has the rest (per tag, errors, ...)
            cells.append(headline(m))
        cells.append(" ".join(json.loads(r["overrides"] or "[]")))
        t.add_row(*(c if isinstance(c, Text) else Text(c) for c in cells))
    out.print(t)


# ---- show / diff --------------------------------------------------------------------------


def defaults_for(run: Run) -> dict[str, Any]:
    """conf/'s defaults composed with the run's model= choice (other models differ wholesale)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from runner.config import CONF, register

    register()
    choice = [o for o in run.overrides if o.split("=", 1)[0].lstrip("+") == "model"][-1:]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=choice)
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    return c


def cmd_show(a: argparse.Namespace) -> None:
    run = load_run(ref_of(a.root, a.hash), getattr(a, 'all', False))
    out.print(stats_table(run))
    out.rule("resolved config (config.yaml)")
    out.print(Syntax(yaml.safe_dump(run.config, sort_keys=False), "yaml", theme="ansi_dark"))
    try:
        diff = dict_diff(defaults_for(run), run.config)
    except Exception as e:  # conf/ changed since the run: the rest of `show` still helps
        out.print(Text(f"defaults unavailable ({type(e).__name__}: {e})", style="yellow"))
    else:
        t = Table("key", "default", "this run",
                  title="differs from the defaults" + (" (none)" if not diff else ""),
                  title_justify="left")
        for k, d, v in diff:
            t.add_row(Text(k), Text(fmt(d)), Text(fmt(v)))
        out.print(t)
    from runner.results.judging.judged import judged_metrics, judgements_by_key

    for m in judged_metrics(run.path, run.items.values()):
        out.print(Text(judged_line("judged", m)))
    judged = judgements_by_key(run.path)
    items = list(run.items.values())[: a.n]
    t = Table("id", "status", "finish", "tokens", "output", "expected",
              *(("judged",) if judged else ()),
              title=f"first {len(items)} of {len(run.items)} outputs", title_justify="left")
    for r in items:
        js = [f"{x['judge_name']}: " + (f"{x['rating']:g}" if x.get("rating") is not None
                                        else f"{x['status']} ({x.get('reason')})")
              for x in judged.get(r["key"], [])]
        t.add_row(Text(str(r.get("id"))), Text(str(r.get("status"))),
                  Text(str(r.get("finish_reason") or "")),
                  Text("+".join("?" if r.get(k) is None and r.get("status") == "ok"  # unknown
                                else str(r.get(k) or 0)
                                for k in ("prompt_tokens", "completion_tokens"))),
                  item_text(r, a.width), Text(expected_text(r.get("expected"))),
                  *((Text("\n".join(js)),) if judged else ()))
    out.print(t)


def cmd_diff(a: argparse.Namespace) -> None:
    ra, rb = (load_run(ref_of(a.root, h)) for h in (a.a, a.b))
    na, nb = ra.hash[:8], rb.hash[:8]
    diff = dict_diff(ra.config, rb.config)
    t = Table("key", na, nb, title=f"config: {len(diff)} difference{'s' * (len(diff) != 1)}",
              title_justify="left")
    for k, x, y in diff:
        t.add_row(Text(k), Text(fmt(x)), Text(fmt(y)))
    out.print(t if diff else t.title)
    ids = list(ra.items) + [i for i in rb.items if i not in ra.items]
    both = [i for i in ids if i in ra.items and i in rb.items]
    same = sum(_same(ra.items[i], rb.items[i]) for i in both)
    t = Table("id", na, nb, "", title="outputs by item id", title_justify="left")
    shown = 0
    for i in ids:
        x, y = ra.items.get(i), rb.items.get(i)
        eq = x is not None and y is not None and _same(x, y)
        if (a.changed and eq) or (a.n and shown >= a.n):
            continue
        shown += 1
        t.add_row(Text(i), item_text(x, a.width), item_text(y, a.width),
                  Text("=", style="green") if eq else Text("≠", style="yellow"))
    out.print(t)
    only_a, only_b = len(ra.items) - len(both), len(rb.items) - len(both)
    out.print(f"{len(both)} items in both: {same} identical, {len(both) - same} differ; "
              f"{only_a} only in {na}, {only_b} only in {nb}.")


def _same(x: dict[str, Any], y: dict[str, Any]) -> bool:
    return all(x.get(k) == y.get(k) for k in ("status", "output", "outputs", "error"))


# ---- export / rm / report / score ----------------------------------------------------


def cmd_export(a: argparse.Namespace) -> None:
    if a.errors and a.format != "openai":
        raise UserError(f"--errors writes the OpenAI Batch API's error file: add --format "
                        f"openai (not {a.format}), or drop --errors.")
    run = load_run(ref_of(a.root, a.hash), a.all)
    text, n = export_text(run, a.format), len(run.items)
    if a.errors:  # OpenAI's layout: successes in the output file, failures in the error file
        text, errors = openai_split(run)
        _write(Path(a.errors), errors)
        bad = errors.count("\n")
        n -= bad
        err.print(f"Wrote {bad} error lines of run {run.hash} to {a.errors}.")
    if not a.out:
        sys.stdout.write(text)
        return
    _write(Path(a.out), text)
    err.print(f"Wrote {n} items of run {run.hash} to {a.out} ({a.format}).")


def _write(dest: Path, text: str) -> None:
    try:
        atomic_write(dest, text)  # no half-written export
    except OSError as e:
        raise UserError(f"Cannot write {dest}: {e.strerror}.") from None


def cmd_rm(a: argparse.Namespace) -> None:
    path = resolve(a.root, a.hash)
    h = path.name
    if not a.yes:
        if not sys.stdin.isatty():
            raise UserError(f"Refusing to delete run {h} without --yes.")
        if input(f"Delete run {h} ({path})? [y/N] ").strip().lower() not in ("y", "yes"):
            err.print("Nothing deleted.")
            return
    lock = a.root / ".locks" / f"{h}.lock"
    try:
        with locked(lock, wait=False):  # never delete a run under a live writer
            # Rename first: the run vanishes at once, even if the tree removal is interrupted.
            trash = a.root / f".rm-{h}-{os.getpid()}"
            path.rename(trash)
            shutil.rmtree(trash)
            index.remove(a.root, h)  # opening a missing index rebuilds it without this run
            lock.unlink(missing_ok=True)
    except LockBusy as e:
        raise UserError(f"Run {h} is being written by {e.holder}; "
                        "stop it before removing the run.") from None
    out.print(f"Removed run {h}.")


def cmd_report(a: argparse.Namespace) -> None:
    dirs = named_runs(a.root, a.hashes, a.sweep)
    if not dirs:
        raise UserError("Name the runs to report: run hashes, --sweep DIR, or both.")
    from runner.results.report import html

    if a.chunk is not None and a.chunk < 1:
        raise UserError(f"--chunk takes a positive number of rows, not {a.chunk}.")
    try:
        chunk = {"chunk": a.chunk} if a.chunk else {}  # else html.py's default
        done = html.build_report(dirs, Path(a.out), full_images=a.full_images,
                                 sweep_rows=_sweep_rows(a), **chunk)
    except OSError as e:  # a read-only folder, a full disk, --out naming a folder
        raise UserError(f"Cannot write the report to {a.out}: {e.strerror or e}.") from None
    out.print(f"Wrote {done} ({len(dirs)} run{'s' * (len(dirs) != 1)}).")


def _sweep_rows(a: argparse.Namespace) -> list[dict[str, Any]] | None:
    """The sweep's runs.json (its overrides name what the sweep chart plots against)."""
    if not a.sweep:
        return None
    from runner.files import read_json

    rows = read_json(sweep_dir(a.root, a.sweep) / "runs.json", [])
    return rows if isinstance(rows, list) else None


def cmd_plot(a: argparse.Namespace) -> None:
    dirs = named_runs(a.root, a.hashes, a.sweep)
    if not dirs:
        raise UserError("Name the runs to plot: run hashes, --sweep DIR, or both.")
    from runner.results.plot.charts import charts
    from runner.results.plot.draw import save

    dest = Path(a.out)
    if dest.suffix.lower() not in (".svg", ".png", ".pdf"):
        raise UserError(f"--out {dest}: name a .svg, .png or .pdf file.")
    every = charts([load_run(d) for d in dirs], _sweep_rows(a))
    found = [c for c in every if c.name == a.chart] if a.chart else every
    if not found:
        have = ", ".join(c.name for c in every) or "none (no metrics.json: run `results score`)"
        raise UserError(f"No {a.chart or ''} chart for these runs; their charts: {have}.")
    for c in found:  # one chart: --out itself; several: FILE-<chart>.svg each
        path = dest if len(found) == 1 else dest.with_name(f"{dest.stem}-{c.name}{dest.suffix}")
        try:
            save(c, path)
        except OSError as e:
            raise UserError(f"Cannot write {path}: {e.strerror or e}.") from None
        out.print(f"Wrote {path} ({c.title}).")


# ---- command line -----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(add_help=False)  # --root before or after the command
    root.add_argument("--root", type=Path, default=argparse.SUPPRESS,
                      help="store root (store.root); default: outputs")
    p = argparse.ArgumentParser(prog="python -m runner.results", parents=[root],
                                description="Find, read, compare, export, score and delete "
                                "runs; HTML reports. A run is a hash prefix or a run folder.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name: str, fn: Callable[[argparse.Namespace], None], help: str
            ) -> argparse.ArgumentParser:
        # help is %-formatted by argparse, a description is not
        s = sub.add_parser(name, parents=[root], help=help.replace("%", "%%"),
                           description=help)
        s.set_defaults(func=fn)
        return s

    s = cmd("ls", cmd_ls, "List runs, newest first.")
    s.add_argument("--model", help="model name contains this (case-insensitive)")
    s.add_argument("--status", choices=STATUSES)
    s.add_argument("--since", metavar="YYYY-MM-DD", help="created on or after this UTC date")
    s.add_argument("--json", action="store_true", help="one JSON object per run")
    s = cmd("show", cmd_show, "A run: stats, config, what differs from the defaults, outputs.")
    s.add_argument("hash")
    s.add_argument("--n", type=int, default=5, help="outputs to show (default 5)")
    s.add_argument("--width", type=int, default=300, help="cut outputs to this many chars (0: all)")
    s.add_argument("--all", action="store_true", help="every record in the run folder, not "
                   "only the items its latest config planned (its view)")
    s = cmd("diff", cmd_diff, "Two runs: config differences, then outputs side by side.")
    s.add_argument("a", metavar="HASH")
    s.add_argument("b", metavar="HASH")
    s.add_argument("--changed", action="store_true", help="only items whose outputs differ")
    s.add_argument("--n", type=int, default=0, help="at most this many items (0: all)")
    s.add_argument("--width", type=int, default=300, help="cut outputs to this many chars (0: all)")
    s = cmd("export", cmd_export, "Write a run's results as JSONL, CSV or OpenAI batch output.")
    s.add_argument("hash")
    s.add_argument("--format", choices=("jsonl", "csv", "openai"), default="jsonl")
    s.add_argument("--out", help="file to write (default: stdout)")
    s.add_argument("--all", action="store_true", help="every record in the run folder, not "
                   "only the items its latest config planned (its view)")
    s.add_argument("--errors", metavar="FILE", help="with --format openai: write the error "
                   "lines to FILE as OpenAI's Batch API error file; the output holds only the "
                   "successes")
    s = cmd("rm", cmd_rm, "Delete a run folder, its index row and its lock file.")
    s.add_argument("hash")
    s.add_argument("--yes", action="store_true", help="do not ask")
    s = cmd("report", cmd_report, "An HTML report comparing runs item by item: one file, or "
            "a folder (index.html + chunks) past --chunk items.")
    s.add_argument("hashes", nargs="*", metavar="HASH")
    s.add_argument("--sweep", metavar="DIR", help="a multirun folder with runs.json")
    s.add_argument("--out", default="report.html",
                   help="the file; a bigger report is the folder of that name without .html")
    s.add_argument("--full-images", action="store_true",
                   help="put the original images in the report (default: relative links)")
    s.add_argument("--chunk", type=int, default=None,
                   help="rows per chunk file; at most this many items make one file "
                   "(default 2000)")
    s = cmd("plot", cmd_plot, "Charts of runs as figures to keep (the report's charts): the "
            "sweep, the card, accuracy by tag, the judge's breakdowns, errors by kind; one file "
            "per chart, FILE-<chart>.EXT when there are several.")
    s.add_argument("hashes", nargs="*", metavar="HASH")
    s.add_argument("--sweep", metavar="DIR", help="a multirun folder with runs.json")
    s.add_argument("--out", required=True, metavar="FILE.svg|.png|.pdf",
                   help="the file; its suffix picks the format")
    s.add_argument("--chart", choices=("sweep", "card", "by-tag", "judge-categories",
                                       "judge-turns", "errors"),
                   help="only this chart, written to FILE itself")
    s = cmd("compare", cmd_compare, "Compare runs item by item against the first (the "
            "base): accuracy with its 95% Wilson interval; per pair the items scored in both, "
            "the delta, its 95% paired bootstrap interval (10,000 resamples, seed 0), the exact "
            "McNemar p (right/wrong scores; partial scores have the bootstrap only) and the "
            "items that flipped.")
    s.add_argument("hashes", nargs="*", metavar="HASH", help="BASE OTHER [OTHER...]")
    s.add_argument("--sweep", metavar="DIR", help="a multirun folder (or its name under "
                   ".sweeps/): every point against the first")
    s.add_argument("--json", action="store_true", help="print the numbers as JSON")
    s.add_argument("--n", type=int, default=20, help="flip ids listed per direction "
                   "(default 20; 0: all)")
    s = cmd("card", cmd_card, "The report card: per run its benchmark's metric with a 95% "
            "interval (Wilson for right/wrong scores, bootstrap otherwise), n, errors and the "
            "published figure; per benchmark run twice or more, the first run against each "
            "other: paired delta and recovery % with 95% paired bootstrap intervals "
            "(docs/evaluations.md).")
    s.add_argument("hashes", nargs="*", metavar="HASH")
    s.add_argument("--sweep", metavar="DIR", help="a multirun folder (or its name under "
                   ".sweeps/)")
    s.add_argument("--by", metavar="FIELD", help="also break down by this item metadata field "
                   "(e.g. subfield)")
    s.add_argument("--judge", metavar="ID|NAME", help="the judge behind a judged headline "
                   "(default: the benchmark's configured judge)")
    s.add_argument("--ref", metavar="MODEL|HASH", help="the comparison table's reference "
                   "column: paired deltas against it (default: the first model)")
    s.add_argument("--json", action="store_true", help="print the card as JSON")
    s = cmd("score", cmd_score, "(Re)score stored runs; nothing is regenerated.")
    s.add_argument("hashes", nargs="+", metavar="HASH")
    s.add_argument("--set", type=Path, default=None,
                   help="set file for scorers/options (default: the run's own set)")
    s = cmd("judge", cmd_judge, "Rate stored outputs against their reference answers with "
            "an LLM judge (an OpenAI-compatible endpoint); judgements are stored beside the run "
            "and never asked twice (docs/judges.md).")
    s.add_argument("args", nargs="+", metavar="HASH|OVERRIDE", help="runs, then overrides of "
                   "the judge config (conf/judging.yaml): judge=mm_mt_bench judge.url=serve ...")
    s.add_argument("--json", action="store_true", help="print the aggregates as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    a.root = Path(getattr(a, "root", "outputs"))
    try:
        a.func(a)
    except UserError as e:
        err.print(Text(f"error: {e}", style="bold red"))
        return e.exit_code
    except sqlite3.Error as e:  # e.g. a read-only store: say so rather than dump a traceback
        err.print(Text(f"error: The run index {a.root / index.INDEX_NAME} is unusable ({e}).",
                       style="bold red"))
        return 2
    except BrokenPipeError:  # `... | head`: quiet, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
