"""The restart and bisection logic on a fake engine (pure orchestration; the real engine's
deaths are in test_faults.py)."""

from __future__ import annotations

import math

import pytest

from runner.errors import EngineDied, EngineFailed
from runner.job.supervise import Restart, Supervisor


class FakeEngine:
    """First come, first served in waves of `window`: a wave holding a poison key kills the
    engine, and so does the wave numbered in `kill_waves` (counted over the engine's life)."""

    def __init__(self, window: int, poison: set[str] = frozenset(), kill_waves: set[int] = ()):
        self.window, self.poison, self.kill_waves = window, set(poison), set(kill_waves)
        self.alive, self.waves, self.starts = True, 0, 1
        self.stored: list[str] = []
        self.poisoned: list[str] = []
        self.tries: dict[str, int] = {}

    def run(self, keys: list[str]) -> None:
        assert self.alive, "ran on a dead engine"
        for i in range(0, len(keys), self.window):
            wave = keys[i:i + self.window]
            for k in wave:
                self.tries[k] = self.tries.get(k, 0) + 1
            self.waves += 1
            if self.poison & set(wave) or self.waves in self.kill_waves:
                self.alive = False
                raise EngineDied("the engine core process was killed by SIGKILL", keys[i:])
            self.stored += wave

    def restart(self, r: Restart) -> None:
        assert not self.alive and r.reason
        self.alive, self.starts = True, self.starts + 1

    def on_poison(self, key: str, reason: str) -> None:
        self.poisoned.append(key)


def supervise(eng: FakeEngine, max_restarts: int = 2) -> Supervisor:
    return Supervisor(eng.run, eng.restart, eng.on_poison, eng.window, max_restarts)


KEYS = [f"k{i:02d}" for i in range(20)]


def test_no_death_no_restart():
    eng = FakeEngine(4)
    sup = supervise(eng)
    sup.generate(KEYS)
    assert eng.stored == KEYS and sup.restarts == [] and eng.starts == 1


def test_a_death_restarts_and_requeues_exactly_what_is_not_stored():
    eng = FakeEngine(4, kill_waves={2})
    sup = supervise(eng)
    sup.generate(KEYS)
    assert sorted(eng.stored) == KEYS and len(eng.stored) == len(set(eng.stored))
    assert [(r.mode, r.in_flight) for r in sup.restarts] == [("restart", 4)]
    assert eng.starts == 2 and sup.death is None


def test_deaths_beyond_max_restarts_fail_and_keep_what_is_stored():
    eng = FakeEngine(4, kill_waves={2, 4, 6, 8})  # dies after every stored wave
    sup = supervise(eng, max_restarts=2)
    with pytest.raises(EngineFailed, match="SIGKILL") as e:
        sup.generate(KEYS)
    assert e.value.restarts == 2 == len(sup.restarts)
    assert eng.stored == KEYS[:12] and list(sup.left) == KEYS[12:]  # nothing stored twice


def test_an_engine_that_always_dies_fails_in_bounded_time():
    """Every start dies at once: the bisection may blame an item, but restarts run out."""
    eng = FakeEngine(4, kill_waves=set(range(2, 1000)))
    sup = supervise(eng, max_restarts=2)
    with pytest.raises(EngineFailed):
        sup.generate(KEYS)
    assert len(eng.poisoned) <= 2 and eng.starts <= 2 * (2 + 2 + math.log2(4) + 1)
    assert eng.stored == KEYS[:4]


@pytest.mark.parametrize("window, bad", [(4, "k05"), (4, "k00"), (8, "k19"), (1, "k07")])
def test_a_poison_item_is_isolated_and_the_rest_complete(window: int, bad: str):
    eng = FakeEngine(window, poison={bad})
    sup = supervise(eng)
    sup.generate(KEYS)
    assert eng.poisoned == [bad]
    assert sorted(eng.stored) == [k for k in KEYS if k != bad]
    assert len(eng.stored) == len(set(eng.stored))
    # bounded: the two deaths that raise suspicion, then at most log2(window) + 1 alone
    assert eng.tries[bad] <= 2 + math.ceil(math.log2(window)) + 1
    assert max(eng.tries.values()) <= eng.tries[bad]
    assert {r.mode for r in sup.restarts} <= {"restart", "bisect"}
    assert sup.death is not None or eng.alive  # the last death (the poison alone) is reported


def test_two_poison_items_within_the_default_restarts():
    eng = FakeEngine(4, poison={"k02", "k13"})
    sup = supervise(eng, max_restarts=2)
    sup.generate(KEYS)
    assert sorted(eng.poisoned) == ["k02", "k13"]
    assert sorted(eng.stored) == [k for k in KEYS if k not in ("k02", "k13")]


def test_two_unrelated_deaths_with_shared_suspects_blame_nobody():
    """Killed twice while the same wave ran, but no item kills the engine alone."""
    eng = FakeEngine(4, kill_waves={2, 3})
    sup = supervise(eng, max_restarts=3)
    sup.generate(KEYS)
    assert eng.poisoned == [] and sorted(eng.stored) == KEYS
    assert "bisect" in [r.mode for r in sup.restarts]
