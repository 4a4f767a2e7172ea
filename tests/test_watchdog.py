"""The watchdog's stall clock counts only time the runner waits on the engine: not the
runner's own work between steps, not a stopped process (Ctrl-Z). A stand-in for vLLM's
client (the attributes the watchdog reads) and a clock the test moves."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from runner.engine import watchdog as wd


class Proc:
    name, pid, exitcode, killed = "EngineCore_DP0", 4242, None, False

    def kill(self) -> None:
        self.killed = True


@pytest.fixture
def dog(monkeypatch: pytest.MonkeyPatch):
    clock = [1000.0]
    monkeypatch.setattr(wd.time, "monotonic", lambda: clock[0])
    proc = Proc()
    core = SimpleNamespace(
        resources=SimpleNamespace(engine_manager=SimpleNamespace(processes=[proc]),
                                  engine_dead=False),
        outputs_queue=SimpleNamespace(put_nowait=lambda e: None))
    d = wd.Watchdog(core, poll_s=3600)  # its thread never polls: the test calls check()
    assert d.off is None
    d.stall_timeout_s = 10
    yield d, clock, proc
    d.stop()


def test_the_runners_own_work_between_steps_is_not_a_stall(dog):
    d, clock, proc = dog
    d.stepping(True)
    d.pause()            # an output handed to the runner: it stores and queues for 60 s
    clock[0] += 60
    assert d.check() is None and not proc.killed
    d.resume()
    clock[0] += 9
    assert d.check() is None
    clock[0] += 2        # 11 s waiting on the engine: a stall, and the core is killed
    assert "no progress for 11 s" in (d.check() or "") and proc.killed


def test_a_stopped_process_does_not_count_and_a_late_poll_only_beyond_its_interval(dog):
    d, clock, proc = dog
    d.poll_s = 0.2
    d.stepping(True)
    clock[0] += 500      # Ctrl-Z for 500 s: the watchdog's next poll comes 500 s late
    d.skip_suspended(500)
    assert d.check() is None and not proc.killed
    d.skip_suspended(0.2 + wd.SUSPENDED_S)  # an ordinary late poll moves nothing
    clock[0] += 11
    assert d.check() is not None and proc.killed
