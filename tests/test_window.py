"""The bounded in-flight window (engine.max_in_flight), on the fake engine: the engine never
holds more requests than the window, later requests are queued as outputs finish, and results
are stored while later requests are not even queued yet."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import TINY, fake_env, run_dirs_of, runner, spawn, wait_for

pytestmark = pytest.mark.process  # the runner's processes on the fake engine: full lane

N = 40


def make_set(root: Path) -> Path:
    d = root / "many"
    d.mkdir(parents=True)
    items = [{"id": f"w{i:02d}", "text": f"Item {i}: say something."} for i in range(N)]
    (d / "set.yaml").write_text(json.dumps({"items": items}))
    return root


def in_flight_peaks(trace: Path) -> tuple[int, int, int]:
    """(most requests the engine held at once, requests received, results sent)."""
    held = peak = got = sent = 0
    for line in trace.read_text().splitlines():
        kind = line.split()[0]
        if kind == "start":
            continue
        held += 1 if kind == "in" else -1
        got, sent = got + (kind == "in"), sent + (kind == "out")
        peak = max(peak, held)
    return peak, got, sent


def test_the_window_is_never_exceeded(tmp_path: Path):
    prompts, store, trace = make_set(tmp_path / "p"), tmp_path / "s", tmp_path / "trace"
    p = runner(*TINY, "prompts.name=many", f"prompts.root={prompts}", f"store.root={store}",
               "engine.max_num_seqs=2", "engine.max_in_flight=4", "sampling.max_tokens=8",
               env=fake_env(trace=str(trace)))
    assert p.returncode == 0, p.stderr[-3000:]
    assert in_flight_peaks(trace) == (4, N, N)
    (run,) = run_dirs_of(store)
    assert len((run / "results.jsonl").read_text().splitlines()) == N


def test_the_default_window_is_twice_max_num_seqs(tmp_path: Path):
    prompts, store, trace = make_set(tmp_path / "p"), tmp_path / "s", tmp_path / "trace"
    p = runner(*TINY, "prompts.name=many", f"prompts.root={prompts}", f"store.root={store}",
               "engine.max_num_seqs=3", "sampling.max_tokens=8", env=fake_env(trace=str(trace)))
    assert p.returncode == 0, p.stderr[-3000:]
    assert in_flight_peaks(trace) == (6, N, N)


def test_results_are_stored_while_later_requests_are_not_queued(tmp_path: Path):
    """The engine holds after 3 results (a gate the test never opens): by then 3 results are
    stored and the engine has been sent at most 3 + the window requests, of 40."""
    prompts, store, trace = make_set(tmp_path / "p"), tmp_path / "s", tmp_path / "trace"
    p = spawn(*TINY, "prompts.name=many", f"prompts.root={prompts}", f"store.root={store}",
              "engine.max_num_seqs=2", "engine.max_in_flight=4", "sampling.max_tokens=8",
              env=fake_env(trace=str(trace), gate_after=3, gate=str(tmp_path / "never")))
    results = lambda: [x for f in store.glob("*/results.jsonl")  # noqa: E731
                       for x in f.read_text().splitlines()]
    wait_for(p, lambda: len(results()) == 3, "3 stored results")
    peak, got, sent = in_flight_peaks(trace)
    assert sent == 3 and got <= 3 + 4 and peak <= 4
    os.killpg(p.pid, signal.SIGKILL)  # the runner and its engine
    p.wait()


class Recorder:
    """The fake engine (its own process) and the sink, logging in order what the window does."""

    def __init__(self, engine, log: list[tuple[str, str]]):
        self.engine, self.log = engine, log
        self.max_num_seqs = engine.max_num_seqs
        self.steps = engine.steps

    def submit(self, key, messages, sampling):
        self.log.append(("submit", key))
        self.engine.submit(key, messages, sampling)

    def in_flight(self):
        return self.engine.in_flight()

    def events(self, stall_timeout_s=None):
        return self.engine.events(stall_timeout_s)

    def output(self, out):
        self.log.append(("stored", out.key))

    def error(self, key, reason, kind):
        self.log.append(("error", key))

    def tokens(self, generated):
        pass


def test_the_first_output_is_read_before_the_window_is_full():
    """max_num_seqs 2 in a window of 8: once 2 are queued, an output is read (and stored)
    before the 8th request is even sent; every key still ends stored once."""
    from runner.engine.fake import FakeEngine
    from runner.job.window import run_window

    engine, log = FakeEngine({"max_num_seqs": 2}), []
    rec = Recorder(engine, log)
    keys = [f"k{i:02d}" for i in range(N)]
    try:
        run_window(rec, keys, lambda k: ([{"role": "user", "content": k}], {"max_tokens": 4}),
                   rec, 8, 60.0)  # type: ignore[arg-type]
    finally:
        engine.kill()
    submits = [i for i, (what, _) in enumerate(log) if what == "submit"]
    first_stored = next(i for i, (what, _) in enumerate(log) if what == "stored")
    assert log[:2] == [("submit", "k00"), ("submit", "k01")]
    assert first_stored < submits[7]
    assert sorted(k for what, k in log if what == "stored") == keys
    assert [k for what, k in log if what == "submit"] == keys


class Stepping:
    """An engine whose submit works in the runner's thread (vLLM's preprocessing): each
    events() call takes one step, which finishes the oldest request queued before it, or
    says it stepped (Stepped)."""

    steps = True
    max_num_seqs = 64

    def __init__(self, log: list[tuple[str, str]]):
        self.log, self.queued, self.running = log, [], []

    def submit(self, key, messages, sampling):
        self.log.append(("submit", key))
        self.queued.append(key)

    def in_flight(self):
        return len(self.queued) + len(self.running)

    def events(self, stall_timeout_s=None):
        from runner.engine.api import Finished, Sample, Stepped

        while self.in_flight():
            done, self.running, self.queued = self.running[:1], self.running[1:] + self.queued, []
            yield Finished(done[0], 3, [Sample("x", "stop", 1)]) if done else Stepped()

    output, error, tokens = Recorder.output, Recorder.error, Recorder.tokens


def test_a_batch_is_queued_in_chunks_with_outputs_read_between_them():
    """max_num_seqs 64: the engine steps between chunks of CHUNK submits, so the first output
    is stored long before the batch is full; nothing is lost, sent twice or over the window."""
    from runner.job.window import CHUNK, run_window

    log: list[tuple[str, str]] = []
    eng = Stepping(log)
    keys = [f"k{i:03d}" for i in range(300)]
    peak = 0

    def request(k):
        nonlocal peak
        peak = max(peak, eng.in_flight() + 1)
        return [{"role": "user", "content": k}], {"max_tokens": 1}

    run_window(eng, keys, request, eng, 128, 60.0)  # type: ignore[arg-type]
    submits = [i for i, (what, _) in enumerate(log) if what == "submit"]
    first_stored = next(i for i, (what, _) in enumerate(log) if what == "stored")
    assert CHUNK < 64 and first_stored < submits[2 * CHUNK]
    assert [k for what, k in log if what == "submit"] == keys
    assert sorted(k for what, k in log if what == "stored") == keys
    assert 64 <= peak <= 128
