"""`python -m runner.results [--root outputs] ls|show|diff|export|rm|report`: read stored runs.

Reads the run folders (the source of truth) and the index (`runner.index`, for `ls`). Imports
neither vLLM nor torch; Hydra only for `show`'s defaults. Errors are one sentence, exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from runner import index
from runner.errors import UserError

CONF = Path(__file__).resolve().parent.parent / "conf"
STATUSES = ("running", "complete", "interrupted", "failed")
ABSENT = object()  # a key missing on one side of a diff
# Piped output is not cut to 80 columns: hashes and ids must stay whole for grep.
out = Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ
              else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Run:
    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    overrides: list[str]
    items: dict[str, dict[str, Any]]  # by item id, the latest record of each
    metrics: dict[str, Any] | None

    @property
    def hash(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return self.manifest.get("model") or (self.config.get("model") or {}).get("name") or "?"


def _load(path: Path, default: Any, parse: Callable[[str], Any]) -> Any:
    try:
        v = parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return default
    return v if isinstance(v, type(default)) else default


def resolve(root: Path, prefix: str) -> Path:
    """A run folder from a unique hash prefix, as git does for commits."""
    p = prefix.strip().lower()
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and d.name.startswith(p)) if p and root.is_dir() else []
    if not names:
        raise UserError(f"No run matches '{prefix}' in {root}.")
    if len(names) > 1 and p not in names:
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        raise UserError(f"Hash prefix '{prefix}' is ambiguous: {shown}.")
    return root / (p if p in names else names[0])


def load_run(path: Path) -> Run:
    from runner.store import RunDir  # omegaconf: only for commands that read results

    items: dict[str, dict[str, Any]] = {}
    for r in RunDir(path.parent, path.name).read_results().values():
        items.pop(r.get("id", r["key"]), None)  # an edited item: its latest record, last
        items[r.get("id", r["key"])] = r
    return Run(path, _load(path / "manifest.json", {}, json.loads),
               _load(path / "config.yaml", {}, yaml.safe_load),
               _load(path / "overrides.yaml", [], yaml.safe_load), items,
               _load(path / "metrics.json", {}, json.loads) or None)


def fmt(v: Any) -> str:
    if v is ABSENT:
        return "—"
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def dict_diff(a: Any, b: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, a, b) for every leaf that differs; lists compare as whole values."""
    if isinstance(a, dict) and isinstance(b, dict):
        rows = []
        for k in list(a) + [k for k in b if k not in a]:
            rows += dict_diff(a.get(k, ABSENT), b.get(k, ABSENT), f"{key}.{k}" if key else str(k))
        return rows
    return [] if a == b else [(key, a, b)]


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


# ---- ls ---------------------------------------------------------------------------------


def cmd_ls(a: argparse.Namespace) -> None:
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
            acc = m.get("accuracy")
            cells.append("" if acc is None else f"accuracy={acc:.3g}"
                         + (f" of {m['scored']}" if "scored" in m else ""))
        cells.append(" ".join(json.loads(r["overrides"] or "[]")))
        t.add_row(*(c if isinstance(c, Text) else Text(c) for c in cells))
    out.print(t)


# ---- show / diff --------------------------------------------------------------------------


def defaults_for(run: Run) -> dict[str, Any]:
    """conf/'s defaults composed with the run's model= choice (other models differ wholesale)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from runner.config import register

    register()
    choice = [o for o in run.overrides if o.split("=", 1)[0].lstrip("+") == "model"][-1:]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=choice)
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    return c


def stats_table(run: Run) -> Table:
    m = run.manifest
    t = kv_table(f"run {run.hash} · {run.model} · {m.get('prompts', '?')}")
    counts, tok = m.get("counts") or {}, m.get("tokens") or {}
    errs = sum(r.get("status") == "error" for r in run.items.values())
    rows = [("status", m.get("status", "no manifest")), ("folder", str(run.path)),
            ("created", m.get("created")), ("finished", m.get("finished")),
            ("items", f"{len(run.items)} stored ({errs} errors) of {counts.get('planned', '?')} "
                      f"planned; last invocation computed {counts.get('computed', '?')}"),
            ("tokens", f"{sum(r.get('prompt_tokens') or 0 for r in run.items.values())} prompt · "
                       f"{sum(r.get('completion_tokens') or 0 for r in run.items.values())} "
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


def cmd_show(a: argparse.Namespace) -> None:
    run = load_run(resolve(a.root, a.hash))
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
    items = list(run.items.values())[: a.n]
    t = Table("id", "status", "finish", "tokens", "output", "expected",
              title=f"first {len(items)} of {len(run.items)} outputs", title_justify="left")
    for r in items:
        t.add_row(Text(str(r.get("id"))), Text(str(r.get("status"))),
                  Text(str(r.get("finish_reason") or "")),
                  Text(f"{r.get('prompt_tokens') or 0}+{r.get('completion_tokens') or 0}"),
                  item_text(r, a.width), Text(str(r.get("expected") or "")))
    out.print(t)


def cmd_diff(a: argparse.Namespace) -> None:
    ra, rb = (load_run(resolve(a.root, h)) for h in (a.a, a.b))
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


# ---- export -----------------------------------------------------------------------------

CSV_FIELDS = ("id", "status", "output", "finish_reason", "prompt_tokens", "completion_tokens",
              "expected", "error", "prompt", "images", "tags")


def _epoch(iso: str | None) -> int:
    try:
        return int(datetime.fromisoformat(iso or "").timestamp())
    except ValueError:
        return 0


def openai_line(run: Run, r: dict[str, Any]) -> dict[str, Any]:
    """One line of the OpenAI Batch API output file; ids are derived, so exports are stable."""
    h = hashlib.sha256(f"{run.hash}:{r['key']}".encode()).hexdigest()
    line: dict[str, Any] = {"id": f"batch_req_{h[:24]}", "custom_id": r.get("id", r["key"])}
    if r.get("status") == "error":
        return line | {"response": None,
                       "error": {"code": "generation_error", "message": str(r.get("error"))}}
    outs = r.get("outputs") or [{"text": r.get("output"), "finish_reason": r.get("finish_reason")}]
    p, c = r.get("prompt_tokens") or 0, r.get("completion_tokens") or 0
    body = {"id": f"chatcmpl-{h[24:48]}", "object": "chat.completion",
            "created": _epoch(r.get("time")), "model": run.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": o["text"]},
                         "logprobs": None, "finish_reason": o["finish_reason"]}
                        for i, o in enumerate(outs)],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}
    return line | {"response": {"status_code": 200, "request_id": f"req_{h[48:64]}",
                                "body": body}, "error": None}


def export_text(run: Run, form: str) -> str:
    recs = list(run.items.values())
    if form == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in recs:
            w.writerow(r | {"images": ";".join(i["path"] for i in r.get("images") or []),
                            "tags": ";".join(r.get("tags") or []),
                            "expected": "" if r.get("expected") is None else r["expected"]})
        return buf.getvalue()
    lines = recs if form == "jsonl" else [openai_line(run, r) for r in recs]
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)


def cmd_export(a: argparse.Namespace) -> None:
    run = load_run(resolve(a.root, a.hash))
    text = export_text(run, a.format)
    if not a.out:
        sys.stdout.write(text)
        return
    dest = Path(a.out)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")  # no half-written export
    try:
        tmp.write_text(text)
        os.replace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"Cannot write {dest}: {e.strerror}.") from None
    err.print(f"Wrote {len(run.items)} items of run {run.hash} to {dest} ({a.format}).")


# ---- rm / report ------------------------------------------------------------------------


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
    fd = os.open(lock, os.O_RDWR) if lock.exists() else None
    try:
        if fd is not None:  # never delete a run under a live writer
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
                raise UserError(f"Run {h} is being written by {holder or 'another process'}; "
                                "stop it before removing the run.") from None
        # Rename first: the run vanishes at once, even if the tree removal is interrupted.
        trash = a.root / f".rm-{h}-{os.getpid()}"
        path.rename(trash)
        shutil.rmtree(trash)
        index.remove(a.root, h)  # opening a missing index rebuilds it without this run
        lock.unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)
    out.print(f"Removed run {h}.")


def sweep_runs(root: Path, sweep: str) -> list[Path]:
    """Runs of a Hydra multirun folder, from the runs.json the runner writes there."""
    d = Path(sweep)
    if not d.is_dir() and (root / ".sweeps" / sweep).is_dir():
        d = root / ".sweeps" / sweep
    if not d.is_dir():
        raise UserError(f"Sweep folder {sweep} does not exist.")
    listed = _load(d / "runs.json", [], json.loads)
    if not listed:
        raise UserError(f"{d} has no readable runs.json (a list of {{\"hash\": ...}} written "
                        "at the end of a sweep); pass the run hashes instead.")
    return [resolve(root, str(x.get("hash", ""))) for x in listed if isinstance(x, dict)]


def cmd_report(a: argparse.Namespace) -> None:
    dirs = [resolve(a.root, h) for h in a.hashes]
    if a.sweep:
        dirs += sweep_runs(a.root, a.sweep)
    dirs = list(dict.fromkeys(dirs))
    if not dirs:
        raise UserError("Name the runs to report: run hashes, --sweep DIR, or both.")
    try:
        from runner import html_report
    except ImportError as e:
        missing = "runner/html_report.py" if e.name == "runner.html_report" else e.name
        raise UserError(f"HTML reports are unavailable: {missing} is not installed.") from None
    done = html_report.build_report(dirs, Path(a.out))
    out.print(f"Wrote {done} ({len(dirs)} run{'s' * (len(dirs) != 1)}).")


# ---- command line -----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(add_help=False)  # --root before or after the command
    root.add_argument("--root", type=Path, default=argparse.SUPPRESS,
                      help="store root (store.root); default: outputs")
    p = argparse.ArgumentParser(prog="python -m runner.results", parents=[root],
                                description="Find, read, compare, export and delete runs.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name: str, fn: Callable[[argparse.Namespace], None], help: str
            ) -> argparse.ArgumentParser:
        s = sub.add_parser(name, parents=[root], help=help, description=help)
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
    s = cmd("rm", cmd_rm, "Delete a run folder, its index row and its lock file.")
    s.add_argument("hash")
    s.add_argument("--yes", action="store_true", help="do not ask")
    s = cmd("report", cmd_report, "An HTML report of runs (runner.html_report).")
    s.add_argument("hashes", nargs="*", metavar="HASH")
    s.add_argument("--sweep", metavar="DIR", help="a multirun folder with runs.json")
    s.add_argument("--out", default="report.html")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    a.root = Path(getattr(a, "root", "outputs"))
    try:
        if not a.root.is_dir():
            raise UserError(f"No store at {a.root}; pass --root (the runs' store.root).")
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
