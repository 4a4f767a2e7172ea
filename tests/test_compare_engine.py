"""`results compare --sweep` on a real sweep: the tiny Pixtral (random weights) on CPU, ONE
engine start, two points (sampling seeds 0 and 1) at temperature 1 over 120 text questions
whose answer is constrained to one letter of A-D. The compare's numbers must equal the same
statistics computed here from each run's results.jsonl and scores.jsonl. The same command
shows that the end of a real run, which does not wait for vLLM's teardown, leaves nothing
behind."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import ROOT, TINY, left_behind, run_watched

pytestmark = pytest.mark.engine

N = 120
Z = 1.959963984540054


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def wilson(x: int, n: int) -> list[float]:
    """The roots of (x/n - p)^2 = z^2 p (1 - p) / n."""
    ph = x / n
    a, b, c = 1 + Z * Z / n, -(2 * ph + Z * Z / n), ph * ph
    r = math.sqrt(b * b - 4 * a * c)
    return [(-b - r) / (2 * a), (-b + r) / (2 * a)]


def binom_two_sided(b: int, c: int) -> float:
    n = b + c
    pk = [Fraction(math.comb(n, k), 2**n) for k in range(n + 1)]
    return float(min(Fraction(1), sum(p for p in pk if p <= pk[b]))) if n else 1.0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Iterator[tuple[Path, subprocess.CompletedProcess, list[str],
                                            Path]]:
    tmp = tmp_path_factory.mktemp("compare")
    rnd = random.Random(0)
    items = [{"id": f"q{i:03d}", "text": f"Question {i}: which letter, A, B, C or D?",
              "expected": rnd.choice("ABCD")} for i in range(N)]
    (tmp / "prompts" / "letters").mkdir(parents=True)
    (tmp / "prompts" / "letters" / "set.yaml").write_text(json.dumps({"items": items}))
    # vLLM's socket files: under rpc/, a short path (a socket path holds at most 107 bytes)
    store, rpc = tmp / "store", Path(tempfile.mkdtemp(prefix="rpc", dir="/tmp"))
    p, seen = run_watched("-m", *TINY, f"store.root={store}", f"prompts.root={tmp / 'prompts'}",
                          "prompts.name=letters", "sampling.temperature=1",
                          "sampling.max_tokens=2", "+sampling.structured_outputs.choice=[A,B,C,D]",
                          "sampling.seed=0,1", env={"VLLM_RPC_BASE_PATH": str(rpc)},
                          timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    yield store, p, left_behind(seen, store) + [f"file {f}" for f in rpc.rglob("*")] + [
        f"shared memory seen: {len(seen.shm)}"], rpc
    shutil.rmtree(rpc, ignore_errors=True)


def test_the_end_of_a_real_run_leaves_nothing_behind(sweep):
    """No engine process, resource tracker, shared memory segment (vLLM's message queues,
    seen mapped while it ran), socket file, torch.distributed file store, temp file, held
    lock or cut line is left once the command returns; the engine's end is quiet."""
    store, _, left, rpc = sweep
    assert rpc.is_dir() and left[:-1] == [] and left[-1] != "shared memory seen: 0", left
    logs = "".join(f.read_text() for f in store.glob("*/engine.log"))
    (init,) = set(re.findall(r"distributed_init_method=file://(\S+)", logs))
    assert not os.path.exists(init)  # the worker's file store, named in its log
    for noise in ("leaked", "exited unexpectedly", "Traceback", "force killing"):
        assert noise not in logs


def test_compare_sweep_agrees_with_the_stored_results(sweep):
    store, p, _, _ = sweep
    (sweep_dir,) = store.glob(".sweeps/*")
    points = json.loads((sweep_dir / "runs.json").read_text())
    dirs = [store / r["hash"] for r in points]
    assert len(dirs) == 2
    engines = [json.loads((d / "manifest.json").read_text())["engine"] for d in dirs]
    assert [e["reused"] for e in engines] == [False, True]  # one engine start for both
    right = []
    for d in dirs:
        results = {r["id"]: r for r in rows(d / "results.jsonl")}
        scores = {s["id"]: s for s in rows(d / "scores.jsonl")}
        assert len(results) == len(scores) == N
        assert all(r["status"] == "ok" and r["output"] in "ABCD" and len(r["output"]) == 1
                   for r in results.values())
        ok = {i: r["output"] == r["expected"] for i, r in results.items()}
        assert ok == {i: s["correct"] for i, s in scores.items()}
        right.append(ok)
    c = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(store),
                        "compare", "--sweep", sweep_dir.name, "--json"], cwd=ROOT, text=True,
                       capture_output=True, timeout=120)
    assert c.returncode == 0, c.stderr
    got = json.loads(c.stdout)
    for run, d, ok in zip(got["runs"], dirs, right, strict=True):
        x = sum(ok.values())
        assert run == {"run": d.name, "n": N, "accuracy": pytest.approx(x / N),
                       "ci95": pytest.approx(wilson(x, N), abs=1e-12)}
    (pair,) = got["pairs"]
    base, other = right
    b = sum(base[i] and not other[i] for i in base)
    w = sum(other[i] and not base[i] for i in base)
    assert {k: pair[k] for k in ("base", "other", "n_paired", "right_to_wrong",
                                 "wrong_to_right")} == {
        "base": dirs[0].name, "other": dirs[1].name, "n_paired": N, "right_to_wrong": b,
        "wrong_to_right": w}
    assert b + w > 0  # temperature 1 and other seeds: the two points differ
    assert pair["delta"] == pytest.approx((w - b) / N)
    assert pair["mcnemar_p"] == pytest.approx(binom_two_sided(b, w), rel=1e-12)
    assert pair["ci95"][0] <= pair["delta"] <= pair["ci95"][1]
    # the sweep's own table: accuracy ± the Wilson half-width of each point
    out = " ".join((p.stdout + p.stderr).split())
    for ok in right:
        x = sum(ok.values())
        lo, hi = wilson(x, N)
        assert f"{round(x / N, 4):.3f} ±{(hi - lo) / 2:.3f}" in out, out[-2000:]
