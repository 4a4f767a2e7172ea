"""Crash safety through real processes, on the fake engine (a child process): Ctrl-C, a torn
line, kill -9, resume, and three concurrent invocations of one config. Each fault lands at a
point the run cannot pass without the test: the fake engine holds at a gate file."""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, TINY, fake_env, output, spawn, wait_for

pytestmark = pytest.mark.process  # the runner's processes on the fake engine: full lane

N = 48
MAX_TOKENS = 64
ARGS = [*TINY, "prompts.name=long", "engine.max_num_seqs=4", f"sampling.max_tokens={MAX_TOKENS}",
        "sampling.ignore_eos=true"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prompts")
    d = root / "long"
    shutil.copytree(ROOT / "prompts/sample/images", d / "images")
    imgs = sorted(p.name for p in (d / "images").iterdir())
    items = [{"id": f"q{i:02d}", "text": f"Question {i}: what do you see?",
              "images": [f"images/{imgs[i % len(imgs)]}"] if i % 2 else []} for i in range(N)]
    (d / "set.yaml").write_text(json.dumps({"items": items}))
    return root


def start(prompts: Path, store: Path, **faults) -> subprocess.Popen:
    return spawn(*ARGS, f"prompts.root={prompts}", f"store.root={store}", env=fake_env(**faults))


def lines(store: Path) -> list[str]:
    """The complete lines of the run's results (a kill may leave a torn last one)."""
    files = list(store.glob("*/results.jsonl"))
    if not files:
        return []
    data = files[0].read_text()
    return data[:data.rfind("\n") + 1].splitlines()


def holds_lock(store: Path, pid: int) -> bool:
    """The run lock's holder line (written once the lock is taken) names this process."""
    return any(f.read_text().startswith(f"pid {pid} ")
               for f in store.glob(".locks/*.lock") if not f.name.endswith(".manifest.lock"))


def stored(store: Path) -> dict[str, dict]:
    """Records by id; no id, and no item key, may be stored twice."""
    recs = [json.loads(x) for x in lines(store)]
    ids, keys = [r["id"] for r in recs], [r["key"] for r in recs]
    assert len(ids) == len(set(ids)) and len(keys) == len(set(keys)), "an item was stored twice"
    return {r["id"]: r for r in recs}


def check_complete(store: Path) -> None:
    """Every planned item exactly once, each a full generation within max_tokens."""
    recs = stored(store)
    assert sorted(recs) == [f"q{i:02d}" for i in range(N)]
    for r in recs.values():
        assert r["status"] == "ok" and 0 < r["completion_tokens"] <= MAX_TOKENS, r
    (m,) = [json.loads(p.read_text()) for p in store.glob("*/manifest.json")]
    assert m["status"] == "complete"
    assert m["counts"]["stored"] == m["counts"]["planned"] == N and m["counts"]["errors"] == 0


def test_concurrent_invocations_compute_once(prompts: Path, tmp_path: Path):
    """Three invocations of one config at once: one computes, two wait and reuse. The first
    holds at its first result until both others have said they wait."""
    store, gate = tmp_path / "store", tmp_path / "gate"
    first = start(prompts, store, gate_after=1, gate=str(gate))
    wait_for(first, lambda: holds_lock(store, first.pid) and len(lines(store)) == 1,
             "the first runner to take the lock and store one result")
    ps = [start(prompts, store, gate_after=1, gate=str(gate)) for _ in range(2)]
    for p in ps:
        wait_for(p, lambda p=p: "being written by pid" in output(p), "a waiter to wait")
    gate.touch()
    done = [(p.wait(timeout=300), output(p)) for p in [first, *ps]]
    assert [rc for rc, _ in done] == [0, 0, 0], [e[-2000:] for _, e in done]
    errs = [" ".join(e.split()) for _, e in done]
    assert "complete" in errs[0] and not any("complete" in e for e in errs[1:])
    assert all(f"being written by pid {first.pid}" in e and "cached" in e for e in errs[1:])
    check_complete(store)


def test_ctrl_c_then_kill_9_then_resume_loses_nothing_and_stores_each_item_once(
        prompts: Path, tmp_path: Path):
    """What the store promises across kills: each fault lands while the engine holds at a gate
    that is never opened, with items still to run."""
    store, never = tmp_path / "store", str(tmp_path / "never")
    p = start(prompts, store, gate_after=8, gate=never)
    wait_for(p, lambda: len(lines(store)) >= 8, "8 stored results")
    p.send_signal(signal.SIGINT)  # the runner process only, as Ctrl-C would reach it first
    assert p.wait(timeout=120) == 130, output(p)[-3000:]
    (m,) = [json.loads(f.read_text()) for f in store.glob("*/manifest.json")]
    before_int = lines(store)
    n1 = len(before_int)
    assert m["status"] == "interrupted" and n1 == 8 and m["counts"]["stored"] == n1
    assert len(stored(store)) == n1

    (res,) = store.glob("*/results.jsonl")
    with open(res, "a") as f:
        f.write('{"id": "q99", "key": "torn')  # what a kill during a write leaves
    p = start(prompts, store, gate_after=8, gate=never)
    wait_for(p, lambda: len(lines(store)) >= n1 + 8, f"{n1 + 8} stored results")
    os.killpg(p.pid, signal.SIGKILL)  # the whole process group: the node is gone
    p.wait(timeout=60)
    before_kill = lines(store)
    assert before_kill[:n1] == before_int  # the resume appended; nothing before changed
    assert len(stored(store)) == n1 + 8 < N

    p = start(prompts, store)
    rc, err = p.wait(timeout=300), output(p)
    assert rc == 0, err[-3000:]
    assert lines(store)[:len(before_kill)] == before_kill  # still nothing lost or changed
    assert "torn" not in res.read_text()
    check_complete(store)
