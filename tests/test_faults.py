"""A dying engine, for real: the vLLM EngineCore process is killed with SIGKILL mid-run, or a
poison item makes it exit (a test-only logits processor). The run must never hang, restart
the engine, store every item exactly once, and isolate the item that kills it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, output, spawn, wait_for
from runner.tokens import mistral_common_file

pytestmark = pytest.mark.engine
PLUGINS = ROOT / "tests" / "plugins"
MARKER = "XQZPOISONQZX"


def make_set(root: Path, n: int, poison: int | None = None) -> Path:
    d = root / "faults"
    d.mkdir(parents=True)
    items = [{"id": f"f{i:02d}", "text": f"Item {i}: tell me a long story."} for i in range(n)]
    if poison is not None:
        items[poison]["text"] = f"Item {poison}: {MARKER} tell me a long story."
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


def engine_cores(pid: int) -> list[int]:
    """Descendants of `pid` whose title vLLM set to VLLM::EngineCore."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass

    def descends(q: int) -> bool:
        while q in parent and q > 1:
            q = parent[q]
            if q == pid:
                return True
        return False

    out = []
    for q in parent:
        try:
            title = Path(f"/proc/{q}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"VLLM::EngineCore") and descends(q):
            out.append(q)
    return out


def kill_engine_core_after(p: subprocess.Popen, store: Path, n: int) -> int:
    """Wait until `n` results are stored, then SIGKILL the engine core; its pid."""
    wait_for(p, lambda: len(stored(store)) >= n, f"{n} stored results (the kill point)")
    (core,) = engine_cores(p.pid)
    os.kill(core, signal.SIGKILL)
    return core


def assert_each_once(recs: list[dict], n: int) -> None:
    ids = [r["id"] for r in recs]
    assert sorted(ids) == [f"f{i:02d}" for i in range(n)], ids


ARGS = ("engine.max_num_seqs=4", "sampling.max_tokens=128")


def test_engine_core_killed_mid_run_restarts_and_finishes(tmp_path: Path):
    n = 16
    prompts, store = make_set(tmp_path / "p", n), tmp_path / "s"
    p = start(prompts, store, *ARGS)
    kill_engine_core_after(p, store, 4)
    assert finish(p) == 0, output(p)[-3000:]
    recs = stored(store)
    assert_each_once(recs, n)
    assert all(r["status"] == "ok" and 0 < r["completion_tokens"] <= 128 for r in recs)
    m = manifest(store)
    assert m["status"] == "complete" and m["counts"]["stored"] == n
    (r,) = m["restarts"]
    assert "SIGKILL" in r["reason"] and r["mode"] == "restart" and 1 <= r["in_flight"] <= 4
    assert "The engine died" in output(p)


def test_kills_beyond_max_restarts_fail_then_a_rerun_resumes(tmp_path: Path):
    n = 12
    prompts, store = make_set(tmp_path / "p", n), tmp_path / "s"
    p = start(prompts, store, *ARGS, "engine.max_restarts=0")
    kill_engine_core_after(p, store, 4)
    assert finish(p) == 3
    out = output(p)
    assert "engine.max_restarts=0 is used up" in out and "Traceback" not in out
    m = manifest(store)
    before = stored(store)
    assert m["status"] == "failed" and m["counts"]["stored"] == len(before) < n
    assert "SIGKILL" in m["error"]

    p = start(prompts, store, *ARGS)  # the rerun computes only what is missing
    assert finish(p) == 0, output(p)[-3000:]
    recs = stored(store)
    assert_each_once(recs, n)
    assert recs[:len(before)] == before
    assert manifest(store)["status"] == "complete"


def test_a_poison_item_is_stored_as_an_error_and_the_rest_complete(tmp_path: Path):
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    n, bad = 8, 3
    tok = Tekkenizer.from_file(str(mistral_common_file()))  # the tiny model's tokenizer
    ids = tok.encode(f"Item {bad}: {MARKER} tell", bos=False, eos=False)
    inner = tok.encode(f" {MARKER}", bos=False, eos=False)[1:-1]  # stable inside any text
    assert len(inner) >= 2 and any(ids[i:i + len(inner)] == inner for i in range(len(ids)))
    prompts, store = make_set(tmp_path / "p", n, poison=bad), tmp_path / "s"
    p = start(prompts, store, "engine.max_num_seqs=2", "sampling.max_tokens=16",
              "+engine.extra.logits_processors=['poison:Poison']",
              env={"PYTHONPATH": f"{PLUGINS}:{ROOT}",
                   "POISON_IDS": ",".join(map(str, inner))})
    assert finish(p) == 0, output(p)[-3000:]
    recs = stored(store)
    assert_each_once(recs, n)
    errs = [r for r in recs if r["status"] == "error"]
    assert [r["id"] for r in errs] == [f"f{bad:02d}"]
    # the logits processor runs in vLLM's worker process: the engine core reports its death
    assert errs[0]["error"].startswith("the engine died while generating this item: ")
    m = manifest(store)
    assert m["status"] == "complete" and m["counts"]["errors"] == 1
    assert {r["mode"] for r in m["restarts"]} == {"restart", "bisect"}
    assert len(m["restarts"]) <= 2 + 2  # two deaths, then at most log2(2) + 1 alone


# --- engine start failures: one sentence, nothing written ----------------------------------

def broken_weights(tmp: Path) -> Path:
    """The tiny model with its safetensors file cut in half, as an interrupted download."""
    import shutil

    from runner.fixtures import tiny

    good = tmp / "good"
    tiny.build(good)
    bad = tmp / "broken"
    shutil.copytree(good, bad)
    f = bad / "consolidated.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    return bad


@pytest.mark.parametrize("case", ["weights", "argument"])  # the KV cache: test_console.py
def test_engine_start_failure_is_one_sentence_and_writes_nothing(case: str, tmp_path: Path):
    args = {"weights": [f"model.path={broken_weights(tmp_path)}", "model.build=null"],
            "argument": ["model.max_model_len=99999999"]}[case]
    expect = {"weights": ["error: The weights in ", " did not load (safetensors"],
              "argument": ["error: vLLM rejected the engine arguments (", "max_model_len"]}[case]
    store = tmp_path / "s"
    p = subprocess.run([sys.executable, "-m", "runner", *TINY, "prompts.limit=1",
                        f"store.root={store}", *args], cwd=ROOT, text=True,
                       capture_output=True, timeout=600)
    assert p.returncode == 2, p.stderr[-3000:]
    err = " ".join(p.stderr.split())
    assert all(x in err for x in expect), p.stderr[-3000:]
    assert "Error executing job" not in err  # no uncaught exception (Hydra's banner)
    assert [d for d in store.glob("*") if not d.name.startswith(".")] == []  # no run folder
