"""Wakes a blocked `LLMEngine.step()` when vLLM's engine core dies or stalls.

vLLM notices a dead engine core process ("engine core exited unexpectedly") but leaves
`step()` waiting on its output queue forever. This thread checks the engine core processes,
vLLM's own dead flag, and the time since the last step returned; on a death or a stall (after
killing the stalled process) it puts an error on that queue, so `step()` raises.
It reads vLLM internals (runner/engine/contract.py names each one); when one is missing it is
off, and says why, instead of failing silently.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any


def exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


SUSPENDED_S = 2.0  # a poll this late (beyond its interval): the process was stopped


class Watchdog:
    def __init__(self, core: Any, poll_s: float = 0.2):
        self.resources = getattr(core, "resources", None)
        manager = getattr(self.resources, "engine_manager", None)
        procs = getattr(manager, "processes", None)
        self.procs = list(procs or [])
        self.queue = getattr(core, "outputs_queue", None)
        self.off = self._missing(core, procs)
        self.stall_timeout_s: float | None = None
        self.poll_s = poll_s
        self.reason: str | None = None
        self.last: float | None = None  # stalls count while stepping only, not between groups
        self.max_gap_s = 0.0
        self._stop = threading.Event()
        if self.off is None:
            threading.Thread(target=self._watch, name="runner-watchdog", daemon=True).start()

    def _missing(self, core: Any, procs: Any) -> str | None:
        """Why the watchdog cannot run, or None."""
        if type(core).__name__ == "InprocClient":
            return "the engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)"
        for what, ok in (
                (f"{type(core).__name__}.resources", self.resources is not None),
                ("BackgroundResources.engine_manager.processes", bool(procs)),
                ("BackgroundResources.engine_dead",
                 hasattr(self.resources, "engine_dead")),
                (f"{type(core).__name__}.outputs_queue.put_nowait",
                 hasattr(self.queue, "put_nowait"))):
            if not ok:
                return f"vLLM has no {what}"
        return None

    def stop(self) -> None:
        self._stop.set()

    def stepping(self, on: bool) -> None:
        t = time.monotonic()
        if on and self.last is not None:
            self.max_gap_s = max(self.max_gap_s, t - self.last)
        self.last = t if on else None

    def pause(self) -> None:
        """The runner's own work between steps (storing an output, queuing the next request,
        preprocessing its images) is not the engine's: the stall clock stops."""
        self.last = None

    def resume(self) -> None:
        self.last = time.monotonic()

    def skip_suspended(self, since_poll_s: float) -> None:
        """The watchdog's own poll came `since_poll_s` after the last one: far more than its
        interval means this process was stopped (Ctrl-Z) or the machine slept. That time was
        nobody's: it moves the stall clock forward."""
        lost = since_poll_s - self.poll_s - SUSPENDED_S
        if lost > 0 and self.last is not None:
            self.last += lost

    def check(self) -> str | None:
        for p in self.procs:
            if p.exitcode is not None:
                return f"the engine core process ({p.name}, pid {p.pid}) {exit_text(p.exitcode)}"
        if getattr(self.resources, "engine_dead", False):
            return "vLLM reported the engine core dead"
        last = self.last
        idle = time.monotonic() - last if last is not None else 0.0
        if self.stall_timeout_s and idle > self.stall_timeout_s:
            self.kill()  # a hung engine would hold its memory: make it a dead one
            return f"no progress for {idle:.0f} s (engine.stall_timeout_s={self.stall_timeout_s:g})"
        return None

    def kill(self) -> None:
        for p in self.procs:
            p.kill()

    def explain(self, e: BaseException) -> str:
        """Why a step or a submit failed: our own finding, else a dead process's exit (vLLM's
        EngineDeadError names none), else the error itself."""
        if self.reason:
            return self.reason
        for p in self.procs:
            p.join(timeout=2.0)  # vLLM may raise before the process is reaped
        return self.check() or f"{type(e).__name__}: {e}"

    def _watch(self) -> None:
        polled = time.monotonic()
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            self.skip_suspended(now - polled)
            polled = now
            reason = self.check()
            if reason:
                self.reason = reason
                self.queue.put_nowait(RuntimeError(reason))  # type: ignore[union-attr]
                return
