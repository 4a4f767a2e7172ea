"""Keeps a generation going when the engine dies: restart it, re-queue exactly the items that
are not stored, and find an item that kills the engine by bisection.

Pure orchestration over item keys; the job supplies how to run a group of items on the live
engine (raising EngineDied with the keys it had not finished), how to restart it, and what to
do with a poison item. No vLLM here.

Which items were in flight: vLLM schedules first come, first served, so the requests it has
started are always among the first `max_num_seqs` unfinished ones in queue order.
Those are the suspects of a death. When two deaths in a row share suspects, the shared ones are
run alone, half at a time, until one item kills the engine on its own (a poison item: stored as
an error) or none does. Each bisection step at least halves the suspects, so no item is retried
without limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from runner.errors import EngineDied, EngineFailed


@dataclass
class Restart:
    time: str  # when the death was noticed
    reason: str
    in_flight: int  # items the engine had started (at most `max_num_seqs`)
    mode: str  # "restart": re-queue what is left; "bisect": looking for a poison item

    def to_dict(self) -> dict:
        return asdict(self)


class Supervisor:
    def __init__(self, run: Callable[[list[str]], None], restart: Callable[[Restart], None],
                 poison: Callable[[str, str], None], max_num_seqs: int, max_restarts: int):
        self.run, self.restart, self.poison = run, restart, poison
        self.max_num_seqs, self.max_restarts = max(1, max_num_seqs), max_restarts
        self.restarts: list[Restart] = []
        self.left: dict[str, None] = {}  # unfinished keys, in queue order
        self.death: Restart | None = None  # set while the engine is dead
        self.counted = 0  # restarts not explained by a poison item
        self.refund = False  # a poison item was isolated: refund a restart once work goes on

    def generate(self, keys: list[str]) -> None:
        """Run every key to completion (stored, or stored as an error) or raise EngineFailed.
        On return the engine may be dead (`self.death`): the caller shuts it down."""
        self.left = dict.fromkeys(keys)
        prev: set[str] = set()
        while self.left:
            d = self._try(list(self.left), "restart")
            if d is None:
                return
            suspects = d.unfinished[:self.max_num_seqs]
            again = [k for k in suspects if k in prev]
            if again:
                self.death.mode = "bisect"  # type: ignore[union-attr]
                if self._bisect(again):
                    self.refund, prev = True, set()
                    continue
            self.counted += 1
            if self.counted > self.max_restarts:
                raise EngineFailed(d.reason, len(self.restarts))
            prev = set(suspects)

    def _try(self, group: list[str], mode: str) -> EngineDied | None:
        """Run `group` on a live engine (restarting a dead one first)."""
        if self.death is not None:
            self.restarts.append(self.death)
            self.restart(self.death)
            self.death = None
        n = len(self.left)
        try:
            self.run(group)
        except EngineDied as d:
            left = set(d.unfinished)
            for k in group:
                if k not in left:
                    self.left.pop(k, None)
            self.death = Restart(_now(), d.reason, min(self.max_num_seqs, len(d.unfinished)), mode)
            self._progress(len(self.left) < n)
            return d
        for k in group:
            self.left.pop(k, None)
        self._progress(True)
        return None

    def _progress(self, made: bool) -> None:
        """A death explained by a poison item costs no restart, once the engine goes on to
        store something without it (so an engine that dies whatever it runs still fails)."""
        if made and self.refund:
            self.counted, self.refund = self.counted - 1, False

    def _bisect(self, suspects: list[str]) -> bool:
        """Run halves of `suspects` alone; True once one item killed the engine on its own."""
        while suspects:
            group = suspects[:max(1, len(suspects) // 2)]
            d = self._try(group, "bisect")
            if d is None:  # the culprit, if any, is in the rest
                suspects = suspects[len(group):]
                continue
            if len(group) == 1:
                self.left.pop(group[0], None)
                self.poison(group[0], d.reason)
                return True
            left = set(d.unfinished)
            suspects = [k for k in group if k in left]
        return False


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
