"""Crash safety through real processes and the real engine: Ctrl-C, a torn line, kill -9,
resume, and three concurrent invocations of one config (issue 3)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY

pytestmark = pytest.mark.engine
N = 48
# Waves of 4 sequences, each 256 tokens: items finish steadily over ~15 s, not all at once.
ARGS = [*TINY, "prompts.name=long", "engine.max_num_seqs=4", "sampling.max_tokens=256",
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
    return subprocess.Popen([sys.executable, "-m", "runner", *ARGS, f"prompts.root={prompts}",
                             f"store.root={store}"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def lines(store: Path) -> list[str]:
    files = list(store.glob("*/results.jsonl"))
    return files[0].read_text().splitlines() if files else []


def wait_for_lines(p: subprocess.Popen, store: Path, n: int, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while len(lines(store)) < n:
        assert p.poll() is None, p.communicate()[1][-3000:]
        assert time.monotonic() < end, "generation never reached the kill point"
        time.sleep(0.05)


def outputs(store: Path) -> dict[str, str]:
    recs = [json.loads(x) for x in lines(store)]
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), "an id was stored twice"
    return {r["id"]: r["output"] for r in recs}


@pytest.fixture(scope="module")
def reference(prompts: Path, tmp_path_factory) -> tuple[Path, list]:
    """Three invocations of one config at once: one computes, two wait and reuse."""
    store = tmp_path_factory.mktemp("concurrent")
    ps = [start(prompts, store)]
    time.sleep(1.0)  # let the first take the lock, so the others must wait
    ps += [start(prompts, store) for _ in range(2)]
    done = [(p.wait(timeout=900), *p.communicate()) for p in ps]
    return store, done


def test_concurrent_invocations_compute_once(reference):
    store, done = reference
    assert [rc for rc, _, _ in done] == [0, 0, 0], [e[-2000:] for _, _, e in done]
    errs = [" ".join(e.split()) for _, _, e in done]
    assert sum("complete" in e for e in errs) == 1
    waiters = [e for e in errs if "being written by pid" in e]
    assert len(waiters) == 2 and all("cached" in e for e in waiters)
    assert len(outputs(store)) == N
    (m,) = [json.loads(p.read_text()) for p in store.glob("*/manifest.json")]
    assert m["status"] == "complete" and m["counts"]["stored"] == N


def test_ctrl_c_then_kill_9_then_resume_equals_an_uninterrupted_run(prompts, reference,
                                                                     tmp_path: Path):
    store = tmp_path / "store"
    p = start(prompts, store)
    wait_for_lines(p, store, 8)
    p.send_signal(signal.SIGINT)  # the runner process only, as Ctrl-C would reach it first
    assert p.wait(timeout=120) == 130
    (m,) = [json.loads(f.read_text()) for f in store.glob("*/manifest.json")]
    n1 = len(lines(store))
    assert m["status"] == "interrupted" and 8 <= n1 < N and m["counts"]["stored"] == n1

    (res,) = store.glob("*/results.jsonl")
    with open(res, "a") as f:
        f.write('{"id": "q99", "key": "torn')  # what a kill during a write leaves
    p = start(prompts, store)
    wait_for_lines(p, store, n1 + 8)
    os.killpg(p.pid, signal.SIGKILL)  # the whole process group: the node is gone
    p.wait(timeout=60)
    assert n1 + 8 <= len(outputs(store)) < N

    p = start(prompts, store)
    rc, err = p.wait(timeout=900), p.communicate()[1]
    assert rc == 0, err[-3000:]
    assert outputs(store) == outputs(reference[0])
    assert not res.read_text().count("torn")
    m = json.loads(next(store.glob("*/manifest.json")).read_text())
    assert m["status"] == "complete" and m["counts"]["stored"] == N
