"""Hydra callback for multiruns: one summary row per sweep point, and runs.json in the sweep
folder (what `python -m runner.results report --sweep DIR` reads); over benchmark sets, the
report card.

Each job writes its row to its own folder (<sweep>/<n>/point.json): with the submitit
launchers jobs run in other processes (or nodes), and only files reach the parent."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich import box
from rich.table import Table

from runner.console import console
from runner.console.summary import Summary
from runner.files import atomic_write, read_json
from runner.results.scoring.stats import half_width


def point(s: Summary) -> dict[str, Any]:
    """A sweep point's row in runs.json, from the job's typed summary."""
    top = None if not s.folder else Path(s.folder) if not s.view else \
        Path(s.folder) / "views" / s.view  # the point's own items, not the folder's
    return {"hash": s.hash, "view": s.view, "folder": s.folder,
            "status": {"complete": "computed"}.get(s.status, s.status),
            "items": s.planned, "computed": s.computed, "errors": s.errors,
            "tokens_per_s": round(s.tokens_per_s, 1), "error": s.error,
            "engine_starts": s.engine_starts, "plan": s.plan, "judge": s.judge,
            "metrics": read_json(top / "metrics.json") if top else None}


def _write(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


class SweepSummary(Callback):
    started: float | None = None  # when this process began its current job (epoch seconds)

    def on_job_start(self, config: DictConfig, **kw: Any) -> None:
        self.started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kw: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        from runner.engine.args import served
        from runner.launch.grouped import engine_key

        row: dict[str, Any] = {"num": config.hydra.job.num,
                               "overrides": list(job_return.overrides or []),
                               "engine": engine_id(engine_key(config)),
                               "served": served(config),  # a server's or an API's: no engine
                               # which process ran it, from when to when (a launcher's timeline)
                               "pid": os.getpid(), "start": self.started, "end": time.time()}
        try:
            result = job_return.return_value  # the job's Summary; raises what the job raised
        except Exception as e:  # noqa: BLE001 - any failure of a job is a failed point
            result = e
        if isinstance(result, Summary):
            row |= point(result)
        else:
            row |= {"hash": None, "status": "failed", "error": repr(result)}
        out = Path(config.hydra.runtime.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "point.json", row)

    def on_multirun_end(self, config: DictConfig, **kw: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        self.rows = sorted((r for p in sweep_dir.glob("*/point.json")
                            if isinstance(r := read_json(p), dict)), key=lambda r: r["num"])
        _write(sweep_dir / "runs.json", self.rows)
        console.print(table(self.rows, sweep_dir))
        if self.rows and all(r.get("plan") for r in self.rows):  # a dry run: what it needs
            from runner.launch.dryrun import needs_table

            points, _ = _points([r["overrides"] for r in self.rows])
            console.print(needs_table(self.rows, points))
        for t in benchmark_card(self.rows):  # points that ran benchmark sets: their card
            console.print(t)
        for r in self.rows:  # which job failed, and why
            if r["status"] == "failed":
                console.print(f"[red]job {r['num']} failed ({' '.join(r['overrides'])}): "
                              f"{r.get('error')}")
        if any(r["status"] == "failed" for r in self.rows):
            sys.exit(1)


def engine_id(key: str) -> str:
    """A point's engine group, short: points with equal ids can share one engine."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def starts_note(rows: list[dict[str, Any]]) -> str:
    """How many engines the sweep started, against the groups of equal engine arguments (one
    start each when a process runs a group's points one after another)."""
    n, groups = sum(r.get("engine_starts", 0) for r in rows), len({r.get("engine") for r in rows})
    of = f"{groups} group{'s' * (groups != 1)} of equal engine arguments"
    asks = len({r.get("engine") for r in rows if r.get("served")})
    if asks:
        of += f", {asks} of them asking a server or an API"
    if rows and all(r["status"] == "planned" for r in rows):
        return f"engine starts: none (a dry run); the sweep needs {groups - asks} ({of})"
    return f"engine starts: {n} ({of})"


def benchmark_card(rows: list[dict[str, Any]]) -> list[Table]:
    """The report card (runner.results.card.card) of the points whose set is a benchmark (mmmu,
    mathvista, chartqa, docvqa, vqav2, mm_mt_bench); nothing when no point ran one. A judged
    row shows the judge the sweep configured, if it rated the run."""
    from runner.results.card.card import BENCHMARKS, benchmark_of, card, tables
    from runner.results.runs.load import Ref, is_run, load_run

    runs = [load_run(Ref(Path(r["folder"]), r.get("view"))) for r in rows
            if r.get("folder") and is_run(Path(r["folder"]))]
    runs = [r for r in runs if benchmark_of(r) in BENCHMARKS.values()]
    judge = next((r["judge"] for r in rows if r.get("judge")), None)
    return tables(card(runs, judge=judge)) if runs else []


def _points(overrides: list[list[str]]) -> tuple[list[str], list[str]]:
    """What varies, as values (`temperature=0.7 seed=1`): each varying override with its key's
    last part (the whole key where two varying keys share it), and the overrides all share."""
    common = set.intersection(*map(set, overrides)) if overrides else set()
    keys = {o.split("=", 1)[0] for ov in overrides for o in ov if o not in common}
    short = {k: k.rsplit(".", 1)[-1].lstrip("+~") for k in keys}
    clash = {v for v in short.values() if list(short.values()).count(v) > 1}
    name = {k: k if v in clash else v for k, v in short.items()}
    points = [" ".join(f"{name[k]}={v}" for k, _, v in (o.partition("=") for o in ov
                                                           if o not in common))
              for ov in overrides]
    return points, [o for o in overrides[0] if o in common] if overrides else []


def versus_first(rows: list[dict[str, Any]]) -> list[bool | None]:
    """Per point: whether its paired difference from the first point has p < 0.05 (exact
    McNemar on right/wrong scores; docs/compare.md); None where there is nothing to
    compare (the first point, a point without stored scores)."""
    from runner.results.card.compare import pair_stats, significant
    from runner.results.runs.load import Ref, Run, load_run

    runs: list[Run | None] = [
        load_run(Ref(Path(r["folder"]), r.get("view"))) if r.get("folder")
        and (Path(r["folder"]) / "scores.jsonl").is_file() else None for r in rows]
    base = runs[0] if runs else None
    # two views of one run (e.g. prompts.limit=2,5) share their outputs: never a pair
    return [None if base is None or run is None or i == 0 or run.path == base.path else
            significant(pair_stats(base, run)) for i, run in enumerate(runs)]


def _accuracy(m: dict[str, Any] | None, mark: bool | None) -> str:
    """`0.617 ±0.087*`: accuracy, the half-width of its 95 % Wilson interval, * if p < 0.05
    against the first point."""
    acc = (m or {}).get("accuracy")
    if acc is None:
        return "-"
    hw = f" ±{half_width(acc, m['scored']):.3f}" if m and m.get("scored") else ""
    return f"{acc:.3f}{hw}" + ("*" if mark else " ")


def table(rows: list[dict[str, Any]], sweep_dir: Path) -> Table:
    """One line per point, readable at 80 columns: the values that vary, status, items,
    speed, the headline metric (accuracy ± its 95 % interval's half-width, * where it differs
    from the first point's; `results show` has the rest), the run."""
    points, common = _points([r["overrides"] for r in rows])
    marks = versus_first(rows)
    notes = (["all points: " + " ".join(common)] if common else []) + [starts_note(rows)]
    if any(m is not None for m in marks):
        notes.append("* paired p < 0.05 against the first point (results compare --sweep)")
    t = Table(title=f"sweep · {len(rows)} points · {sweep_dir}", title_justify="left",
              caption="\n".join(notes) or None,
              caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              collapse_padding=True)
    t.add_column("point", ratio=1, overflow="fold",
                  min_width=min(28, max((len(p) for p in points), default=5)))
    t.add_column("status", no_wrap=True)
    t.add_column("items", justify="right", no_wrap=True)
    t.add_column("tok/s", justify="right", no_wrap=True)
    t.add_column("accuracy ±95%", justify="right", no_wrap=True)  # the headline metric
    t.add_column("run", no_wrap=True)
    style = {"computed": "green", "cached": "cyan"}
    for r, point, mark in zip(rows, points, marks, strict=True):
        t.add_row(point or "-", f"[{style.get(r['status'], 'red')}]{r['status']}[/]",
                  str(r.get("items", "-")), str(r.get("tokens_per_s", "-")),
                  _accuracy(r.get("metrics"), mark), r["hash"] or "-")
    return t


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().mode == RunMode.MULTIRUN
