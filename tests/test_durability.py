"""Crash safety through real processes and the real engine: Ctrl-C, a torn line, kill -9,
resume, and three concurrent invocations of one config (issue 3)."""

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, TINY, output, spawn, wait_for

pytestmark = pytest.mark.engine
N = 48
# Waves of 4 sequences, each 256 tokens: items finish steadily over ~15 s, not all at once.
MAX_TOKENS = 256
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


def start(prompts: Path, store: Path) -> subprocess.Popen:
    return spawn(*ARGS, f"prompts.root={prompts}", f"store.root={store}")


def lines(store: Path) -> list[str]:
    """The complete lines of the run's results (a kill may leave a torn last one)."""
    files = list(store.glob("*/results.jsonl"))
    if not files:
        return []
    data = files[0].read_text()
    return data[:data.rfind("\n") + 1].splitlines()


def wait_for_lines(p: subprocess.Popen, store: Path, n: int) -> None:
    wait_for(p, lambda: len(lines(store)) >= n, f"{n} stored results")


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


@pytest.fixture(scope="module")
def reference(prompts: Path, tmp_path_factory) -> tuple[Path, list]:
    """Three invocations of one config at once: one computes, two wait and reuse."""
    store = tmp_path_factory.mktemp("concurrent")
    first = start(prompts, store)
    wait_for(first, lambda: holds_lock(store, first.pid), "the first runner to take the lock")
    ps = [first] + [start(prompts, store) for _ in range(2)]
    done = [(p.wait(timeout=900), output(p)) for p in ps]
    return store, done


def test_concurrent_invocations_compute_once(reference):
    store, done = reference
    assert [rc for rc, _ in done] == [0, 0, 0], [e[-2000:] for _, e in done]
    errs = [" ".join(e.split()) for _, e in done]
    assert "complete" in errs[0] and not any("complete" in e for e in errs[1:])
    waiters = errs[1:]
    assert all("being written by pid" in e and "cached" in e for e in waiters), waiters
    check_complete(store)


def test_ctrl_c_then_kill_9_then_resume_loses_nothing_and_stores_each_item_once(
        prompts, tmp_path: Path):
    """What the store promises across kills. Not the same text as an uninterrupted run: a
    resumed batch is another batch composition, and vLLM's CPU kernels are not batch-invariant."""
    store = tmp_path / "store"
    p = start(prompts, store)
    wait_for_lines(p, store, 8)
    p.send_signal(signal.SIGINT)  # the runner process only, as Ctrl-C would reach it first
    assert p.wait(timeout=120) == 130
    (m,) = [json.loads(f.read_text()) for f in store.glob("*/manifest.json")]
    before_int = lines(store)
    n1 = len(before_int)
    assert m["status"] == "interrupted" and 8 <= n1 < N and m["counts"]["stored"] == n1
    assert len(stored(store)) == n1

    (res,) = store.glob("*/results.jsonl")
    with open(res, "a") as f:
        f.write('{"id": "q99", "key": "torn')  # what a kill during a write leaves
    p = start(prompts, store)
    wait_for_lines(p, store, n1 + 8)
    os.killpg(p.pid, signal.SIGKILL)  # the whole process group: the node is gone
    p.wait(timeout=60)
    before_kill = lines(store)
    assert before_kill[:n1] == before_int  # the resume appended; nothing before changed
    assert n1 + 8 <= len(stored(store)) < N

    p = start(prompts, store)
    rc, err = p.wait(timeout=900), output(p)
    assert rc == 0, err[-3000:]
    assert lines(store)[:len(before_kill)] == before_kill  # still nothing lost or changed
    assert "torn" not in res.read_text()
    check_complete(store)
