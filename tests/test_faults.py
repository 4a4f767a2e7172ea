"""A dying engine. The runner's own handling (restarts, exhausted restarts, stalls, poison
bisection) runs on the fake engine, a child process killed for real. What is about vLLM runs
on the real engine, one test each: its EngineCore SIGKILLed mid-run, a poison item that makes
it exit (a test-only logits processor), a failing start. The run must never hang, must store
every item exactly once, and must isolate the item that kills the engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import (
    ROOT,
    TINY,
    engine_procs,
    fake_env,
    output,
    run_dirs_of,
    runner,
    spawn,
    wait_for,
)
from runner.bundled import mistral_common_file
from runner.engine.args import explain_start_failure

pytestmark = pytest.mark.process  # the runner's processes on the fake engine: full lane

PLUGINS = ROOT / "tests" / "plugins"
POISON, GATE = "XQZPOISONQZX", "XQZGATEQZX"


def make_set(root: Path, n: int, marks: dict[int, str] | None = None) -> Path:
    d = root / "faults"
    d.mkdir(parents=True)
    items = [{"id": f"f{i:02d}", "text": f"Item {i}: tell me a long story."} for i in range(n)]
    for i, m in (marks or {}).items():
        items[i]["text"] = f"Item {i}: {m} tell me a long story."
    (d / "set.yaml").write_text(json.dumps({"items": items}))
    return root


def start(prompts: Path, store: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return spawn(*TINY, "prompts.name=faults", f"prompts.root={prompts}", f"store.root={store}",
                 "sampling.ignore_eos=true", *args, env=env)


def finish(p: subprocess.Popen, timeout: float = 900) -> int:
    """The exit code; a run that hangs fails the test instead of blocking it."""
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"the runner hung:\n{output(p)[-3000:]}")


def stored(store: Path) -> list[dict]:
    recs = []
    for f in store.glob("*/results*.jsonl"):
        data = f.read_text()
        recs += [json.loads(x) for x in data[:data.rfind("\n") + 1].splitlines()]
    return recs


def manifest(store: Path) -> dict:
    (m,) = [json.loads(f.read_text()) for f in store.glob("*/manifest.json")]
    return m


def assert_each_once(recs: list[dict], n: int) -> None:
    ids = [r["id"] for r in recs]
    assert sorted(ids) == [f"f{i:02d}" for i in range(n)], ids


def marker_ids(marker: str) -> str:
    """The marker's token ids as they appear inside any prompt (the tiny model's tokenizer)."""
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    tok = Tekkenizer.from_file(str(mistral_common_file()))
    ids = tok.encode(f"Item 3: {marker} tell", bos=False, eos=False)
    inner = tok.encode(f" {marker}", bos=False, eos=False)[1:-1]  # stable inside any text
    assert len(inner) >= 2 and any(ids[i:i + len(inner)] == inner for i in range(len(ids)))
    return ",".join(map(str, inner))


ARGS = ("engine.max_num_seqs=4", "sampling.max_tokens=32")


# --- the runner's handling, on the fake engine ------------------------------------------------

def test_a_killed_engine_restarts_and_the_run_finishes(tmp_path: Path):
    n = 16
    prompts, store = make_set(tmp_path / "p", n), tmp_path / "s"
    gate = tmp_path / "gate"
    p = start(prompts, store, *ARGS, env=fake_env(gate_after=4, gate=str(gate), deaths=1,
                                                  state=str(tmp_path)))
    wait_for(p, lambda: len(stored(store)) == 4, "4 stored results (the engine holds there)")
    (eng,) = engine_procs(p.pid)
    os.kill(eng, signal.SIGKILL)
    assert finish(p) == 0, output(p)[-3000:]
    recs = stored(store)
    assert_each_once(recs, n)
    assert all(r["status"] == "ok" and r["completion_tokens"] == 32 for r in recs)
    m = manifest(store)
    assert m["status"] == "complete" and m["counts"]["stored"] == n
    (r,) = m["restarts"]
    assert "SIGKILL" in r["reason"] and r["mode"] == "restart" and r["in_flight"] == 4
    assert "The engine died" in output(p) and "Traceback" not in output(p)


def test_deaths_beyond_max_restarts_fail_then_a_rerun_resumes(tmp_path: Path):
    n = 12
    prompts, store = make_set(tmp_path / "p", n), tmp_path / "s"
    p = start(prompts, store, *ARGS, "engine.max_restarts=1", env=fake_env(die_after=4))
    assert finish(p) == 3
    out = output(p)
    assert "engine.max_restarts=1 is used up" in out and "Traceback" not in out
    m = manifest(store)
    before = stored(store)
    assert m["status"] == "failed" and m["counts"]["stored"] == len(before) == 8  # 4 per life
    assert "SIGKILL" in m["error"] and len(m["restarts"]) == 1

    p = start(prompts, store, *ARGS, env=fake_env())  # the rerun computes only what is missing
    assert finish(p) == 0, output(p)[-3000:]
    recs = stored(store)
    assert_each_once(recs, n)
    assert recs[:len(before)] == before
    assert manifest(store)["status"] == "complete"


def test_a_stalled_engine_is_killed_and_restarted(tmp_path: Path):
    n = 8
    prompts, store = make_set(tmp_path / "p", n), tmp_path / "s"
    p = start(prompts, store, *ARGS, "engine.stall_timeout_s=1",
              env=fake_env(stall_after=2, deaths=1, state=str(tmp_path)))
    assert finish(p) == 0, output(p)[-3000:]
    assert_each_once(stored(store), n)
    (r,) = manifest(store)["restarts"]
    assert r["reason"].startswith("no progress for ") and "stall_timeout_s=1" in r["reason"]


@pytest.mark.parametrize("seqs", [1, 4])
def test_a_poison_item_is_isolated_on_the_fake(seqs: int, tmp_path: Path):
    n, bad = 10, 6
    prompts, store = make_set(tmp_path / "p", n, {bad: POISON}), tmp_path / "s"
    p = start(prompts, store, f"engine.max_num_seqs={seqs}", "sampling.max_tokens=8",
              env=fake_env(poison=POISON))
    assert finish(p) == 0, output(p)[-3000:]
    recs = stored(store)
    assert_each_once(recs, n)
    assert [r["id"] for r in recs if r["status"] == "error"] == [f"f{bad:02d}"]
    m = manifest(store)
    assert m["status"] == "complete" and m["counts"]["errors"] == 1
    assert {r["mode"] for r in m["restarts"]} == {"restart", "bisect"}


@pytest.mark.parametrize(("line", "words"), [
    ("safetensors_rust.SafetensorError: Error while deserializing header: "
     "MetadataIncompleteBuffer", ["The weights in /m did not load (safetensors"]),
    ("ValueError: No available memory for the cache blocks.",
     ["Not enough memory for the KV cache (ValueError: No available memory"]),
    ("OSError: [Errno 98] Address already in use", ["A port the engine needs is in use"]),
])
def test_start_failures_name_their_root_cause(line: str, words: list[str]):
    """vLLM's wrapper error, and the root cause in a child process's log lines."""
    e = RuntimeError("Engine core initialization failed. See root cause above.")
    msg = explain_start_failure(e, f"INFO starting\n(EngineCore pid=1) {line}\n", "/m")
    assert all(w in msg for w in words), msg
    own = explain_start_failure(ValueError("max_model_len 99999999 is too large"), "", "/m")
    assert own.startswith("vLLM rejected the engine arguments (ValueError: max_model_len")


# --- the real engine ------------------------------------------------------------------------

@pytest.mark.engine
def test_the_real_engine_core_killed_then_stalled_restarts_and_the_run_finishes(tmp_path: Path):
    """Two faults of vLLM's EngineCore, each while it holds in a test logits processor as
    item 4 joins the batch (a gate only the test opens): first the test SIGKILLs it (the
    watchdog sees the death); then the restarted core holds again and nobody kills it: with
    engine.stall_timeout_s=15 the watchdog finds no progress, kills the core itself and says
    so. The third engine gets the open gate and the rest; each item is stored once and the
    console stays quiet."""
    n = 12
    prompts, store = make_set(tmp_path / "p", n, {4: GATE}), tmp_path / "s"
    gate = tmp_path / "gate"
    held = Path(f"{gate}.held")
    p = start(prompts, store, *ARGS, "+engine.extra.logits_processors=['poison:Gate']",
              "engine.stall_timeout_s=15",
              env={"PYTHONPATH": f"{PLUGINS}:{ROOT}", "GATE_IDS": marker_ids(GATE),
                   "GATE_FILE": str(gate)})
    wait_for(p, held.exists, "the first engine to hold at the gate")
    at_kill = len(stored(store))  # what finished before item 4 joined the batch
    (core,) = engine_procs(p.pid)
    held.unlink()
    os.kill(core, signal.SIGKILL)
    wait_for(p, held.exists, "the restarted engine to hold at the gate", 900)
    (stalled,) = engine_procs(p.pid)
    assert stalled != core
    wait_for(p, lambda: stalled not in engine_procs(p.pid), "the watchdog to kill the stalled "
             "engine core", 900)
    gate.touch()
    assert finish(p) == 0, output(p)[-3000:]
    assert at_kill < n  # the kill landed mid-run
    recs = stored(store)
    assert_each_once(recs, n)
    assert all(r["status"] == "ok" and r["completion_tokens"] == 32 for r in recs)
    m = manifest(store)
    assert m["status"] == "complete" and m["counts"]["stored"] == n and m["watchdog"] == "on"
    killed, stall = m["restarts"]
    assert "SIGKILL" in killed["reason"] and killed["mode"] == "restart"
    assert 1 <= killed["in_flight"] <= 4
    assert stall["reason"].startswith("no progress for ") and \
        "(engine.stall_timeout_s=15)" in stall["reason"], stall
    out = output(p)
    assert "The engine died" in out and "Traceback" not in out and "WARNING" not in out
    (run,) = run_dirs_of(store)
    log = (run / "engine.log").read_text()
    assert log.count("Initializing a V1 LLM engine") == 3  # vLLM's lines, every engine
    # the last engine was not reported dead: the end of the command killed it quietly,
    # without waiting for vLLM's teardown (no executor shutdown lines)
    last = log.split("Initializing a V1 LLM engine")[-1]
    assert "[shutdown] Executor:" not in last
    assert "force killing" not in last and "exited unexpectedly" not in last


@pytest.mark.engine
def test_a_real_poison_item_is_stored_as_an_error_and_the_rest_complete(tmp_path: Path):
    n, bad = 8, 3
    prompts, store = make_set(tmp_path / "p", n, {bad: POISON}), tmp_path / "s"
    p = start(prompts, store, "engine.max_num_seqs=2", "sampling.max_tokens=16",
              "+engine.extra.logits_processors=['poison:Poison']",
              env={"PYTHONPATH": f"{PLUGINS}:{ROOT}", "POISON_IDS": marker_ids(POISON)})
    assert finish(p) == 0, output(p)[-3000:]
    recs = stored(store)
    assert_each_once(recs, n)
    errs = [r for r in recs if r["status"] == "error"]
    assert [r["id"] for r in errs] == [f"f{bad:02d}"]
    # the logits processor runs in vLLM's worker process: the engine core reports its death
    assert errs[0]["error"].startswith("the engine died while generating this item: ")
    assert errs[0]["error_kind"] == "engine_death"
    m = manifest(store)
    assert m["status"] == "complete" and m["counts"]["errors"] == 1
    assert {r["mode"] for r in m["restarts"]} == {"restart", "bisect"}
    assert len(m["restarts"]) <= 2 + 2  # two deaths, then at most log2(2) + 1 alone


@pytest.mark.engine
def test_a_real_failing_engine_start_is_one_sentence_with_the_log_tail(tmp_path: Path):
    # vLLM refuses a 1-byte KV cache in the engine-core process, after loading the model
    p = runner(*TINY, f"store.root={tmp_path}", "engine.kv_cache_memory_bytes=1", timeout=900)
    assert p.returncode == 2, p.stderr[-3000:]
    err = p.stderr
    before, tail = err.split("lines of the engine log")
    before = " ".join(before.split())
    assert "error: Not enough memory for the KV cache (" in before and "Traceback" not in before
    (log,) = (tmp_path / ".logs").iterdir()  # no run folder: the start log is kept
    assert not run_dirs_of(tmp_path)
    assert f"engine log: {log}" in err
    assert "(EngineCore" in log.read_text()  # the engine core's own lines
    assert "No available memory for the cache blocks" in tail  # its root cause
    assert err.count("\n") <= 40


# --- the watchdog is never off silently ------------------------------------------------------

def test_the_watchdog_names_the_vllm_internal_it_cannot_find():
    from types import SimpleNamespace

    from runner.engine.watchdog import Watchdog

    proc = SimpleNamespace(exitcode=None, name="EngineCore_DP0", pid=1)
    whole = SimpleNamespace(resources=SimpleNamespace(
        engine_manager=SimpleNamespace(processes=[proc]), engine_dead=False),
        outputs_queue=SimpleNamespace(put_nowait=lambda e: None))
    dog = Watchdog(whole)
    assert dog.off is None
    dog.stop()
    no_procs = SimpleNamespace(resources=SimpleNamespace(engine_dead=False),
                               outputs_queue=whole.outputs_queue)
    assert Watchdog(no_procs).off == "vLLM has no BackgroundResources.engine_manager.processes"
    no_queue = SimpleNamespace(resources=whole.resources)
    assert Watchdog(no_queue).off == "vLLM has no SimpleNamespace.outputs_queue.put_nowait"


def test_an_engine_without_a_watchdog_says_so_three_times(tmp_path: Path):
    store = tmp_path / "s"
    p = runner(*TINY, f"store.root={store}", "prompts.limit=2",
               env=fake_env(watchdog_off="vLLM has no MPClient.resources"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "the engine watchdog is off: vLLM has no MPClient.resources" in " ".join(
        p.stderr.split())
    m = manifest(store)
    assert m["watchdog"] == "off: vLLM has no MPClient.resources"
    (run,) = run_dirs_of(store)
    assert "runner: engine watchdog off: vLLM has no MPClient.resources" in (
        run / "engine.log").read_text()
