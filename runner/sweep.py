"""Hydra callback for multiruns: one summary row per sweep point, and runs.json in the sweep
folder (what `python -m runner.results report --sweep DIR` reads).

Each job writes its row to its own folder (<sweep>/<n>/point.json): with the submitit
launchers jobs run in other processes (or nodes), and only files reach the parent."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.table import Table

from runner.console import console
from runner.files import atomic_write, read_json
from runner.report import Summary


def point(s: Summary) -> dict[str, Any]:
    """A sweep point's row in runs.json, from the job's typed summary."""
    return {"hash": s.hash, "folder": s.folder,
            "status": {"complete": "computed"}.get(s.status, s.status),
            "items": s.planned, "computed": s.computed, "errors": s.errors,
            "tokens_per_s": round(s.tokens_per_s, 1), "error": s.error,
            "metrics": read_json(Path(s.folder) / "metrics.json") if s.folder else None}


def _write(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=2) + "\n")


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kw: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        row: dict[str, Any] = {"num": config.hydra.job.num,
                               "overrides": list(job_return.overrides or [])}
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
        t = Table(title=f"sweep · {len(self.rows)} points · {sweep_dir}", title_justify="left")
        for col in ("overrides", "hash", "status", "items", "tok/s", "metrics"):
            t.add_column(col)
        style = {"computed": "green", "cached": "cyan"}
        common = set.intersection(*(set(r["overrides"]) for r in self.rows)) if self.rows else set()
        for r in self.rows:
            m = r.get("metrics") or {}
            t.add_row(" ".join(o for o in r["overrides"] if o not in common), r["hash"] or "-",
                      f"[{style.get(r['status'], 'red')}]{r['status']}[/]",
                      str(r.get("items", "-")), str(r.get("tokens_per_s", "-")),
                      " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in m.items() if not isinstance(v, dict)))
        console.print(t)
        if any(r["status"] == "failed" for r in self.rows):
            sys.exit(1)
