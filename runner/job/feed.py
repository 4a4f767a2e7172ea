"""The engine side of a job: start (or reuse) the engine for a config, feed it the items
through the bounded window (runner/job/window.py), restart it when it dies and isolate an item
that kills it (runner/job/supervise.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.console import console
from runner.console.display import starting
from runner.console.summary import Summary
from runner.engine.api import Engine
from runner.errors import EngineFailed
from runner.job.sink import Sink
from runner.kinds import death_kind
from runner.plan.images import inline_images
from runner.plan.load import Item, set_root
from runner.store import manifest
from runner.store.rundir import RunDir


class Feed:
    def __init__(self, cfg: DictConfig, set_root: Path | None = None):
        self.cfg, self._root = cfg, set_root
        self.engine: Engine | None = None  # None until started, and after a fatal death
        self.quant: dict[str, Any] | None = None  # what the engine runs (its quantization)

    @property
    def set_root(self) -> Path:
        """The set's folder (its images stay under it): the plan's, else read from the set
        without planning it (a run that may need an engine before its plan is done)."""
        if self._root is None:
            self._root = set_root(self.cfg.prompts.name, self.cfg.prompts.root)
        return self._root

    def knows_root(self, root: Path) -> None:
        self._root = self._root or root

    def spec(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from runner.engine import engine_spec

        return engine_spec(self.cfg, self.set_root)

    def live(self) -> bool:
        """An engine for this config is live in this process (a sweep's earlier point)."""
        from runner.engine import SLOT

        return SLOT.has(*self.spec())

    def start(self) -> tuple[float, bool]:
        """Start (or reuse) the engine, with engine.env set for its life: (seconds it took,
        whether it was reused)."""
        from runner.engine import SLOT

        kw, env = self.spec()
        api = (self.cfg.model.get("api") or {}).get("url")
        what = f"Connecting to the API for {self.cfg.model.name}" if api else \
            f"Connecting to the vLLM server for {self.cfg.model.name}" \
            if self.cfg.engine.url else None
        with starting(self.cfg.model.name, reused=SLOT.has(kw, env), what=what):
            self.engine, start_s, reused = SLOT.get(kw, env)
        self._watchdog()
        self.quant = self.engine.describe()
        return start_s, reused

    def _watchdog(self) -> None:
        """Never off silently: a console line, a line in engine.log (this process's stderr
        goes there) and the manifest's `watchdog` say so."""
        assert self.engine is not None
        if self.engine.watchdog != "on":
            console.print(f"[yellow]warning: the engine watchdog is {self.engine.watchdog}; "
                          "an engine that dies or stalls can hang this run.")
            print(f"runner: engine watchdog {self.engine.watchdog}", file=sys.stderr, flush=True)

    def run(self, items: list[Item], sampling: Callable[[Item], dict[str, Any]], sink: Sink,
            rd: RunDir, s: Summary) -> None:
        """Every item through the live engine, each outcome into `sink`; deaths restart it
        (recorded in the manifest) up to engine.max_restarts."""
        from runner.engine import SLOT, media_root
        from runner.job.supervise import Restart, Supervisor
        from runner.job.window import run_window

        cfg, by_key = self.cfg, {it.key: it for it in items}
        media = media_root(cfg, self.set_root)

        def request(k: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            return inline_images(by_key[k].messages, keep=media), sampling(by_key[k])

        def run_group(keys: list[str]) -> None:
            assert self.engine is not None
            try:
                run_window(self.engine, keys, request, sink,
                           cfg.engine.max_in_flight or 2 * self.engine.max_num_seqs,
                           cfg.engine.stall_timeout_s)
            finally:
                s.max_gap_s = max(s.max_gap_s, self.engine.max_gap_s)

        def restart(r: Restart) -> None:
            what = "looking for the item that kills it" if r.mode == "bisect" else \
                f"restart {s.restarts + 1} of {cfg.engine.max_restarts}"
            console.print(f"[yellow]The engine died ({r.reason}) with {r.in_flight} items in "
                          f"flight; {what}…")
            self.engine, start_s, _ = SLOT.restart()
            self._watchdog()
            s.restarts += r.mode == "restart"
            manifest.restarted(rd, r.to_dict() | {"start_s": round(start_s, 3)})

        def poison(key: str, reason: str) -> None:
            console.print(f"[red]Item {by_key[key].id} kills the engine on its own; "
                          "stored as an error.")
            sink.error(key, f"the engine died while generating this item: {reason}",
                       death_kind(reason))

        assert self.engine is not None
        sup = Supervisor(run_group, restart, poison, self.engine.max_num_seqs,
                         cfg.engine.max_restarts)
        drained = False
        try:
            sup.generate([it.key for it in items])
            drained = True
        except EngineFailed as e:
            raise EngineFailed(f"The engine died {e.restarts + 1} times (last: {e.reason}) and "
                               f"engine.max_restarts={cfg.engine.max_restarts} is used up; what "
                               "finished is stored, so rerun the same command to resume.",
                               e.restarts) from None
        finally:
            # Ended any other way (the budget, a write that failed, Ctrl-C, a bug), requests may
            # still be queued in the engine: the next sweep point must not reuse it, or their
            # outputs would arrive under its keys. A death leaves a dead engine to free too.
            if not drained or sup.death is not None:
                self.stop()

    def stop(self) -> None:
        from runner.engine import SLOT

        SLOT.shutdown()
        self.engine = None
