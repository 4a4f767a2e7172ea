"""The runner's process behaviour end to end, on the fake engine (a child process; conftest
`fake_env`): a run's folder, a sweep that reuses its engine, shards through submitit. What
vLLM produces is checked on the real engine (test_real_engine.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE, ROOT, TINY, left_behind, run_watched, runner
from test_cli import imported_heavy

pytestmark = pytest.mark.process  # the runner's processes on the fake engine: full lane


def run_dirs(store: Path) -> list[Path]:
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def results(path: Path) -> list[dict]:
    f = path / "results.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    p, seen = run_watched(*TINY, f"store.root={store}", env=FAKE)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "complete" in p.stderr
    assert len(seen.pids) >= 2 and left_behind(seen, store) == []  # the runner, its engine
    # no TTY: plain lines, the engine's output in engine.log
    assert p.stderr.count("\n") <= 25 and "fake engine" not in p.stderr + p.stdout, p.stderr
    assert "generating 5/5 items" in p.stderr
    (d,) = run_dirs(store)
    return d


def test_run_writes_config_manifest_results_and_the_engine_log(first: Path):
    assert {p.name for p in first.iterdir()} >= {"config.yaml", "overrides.yaml",
                                                  "manifest.json", "results.jsonl", "engine.log"}
    m = json.loads((first / "manifest.json").read_text())
    assert m["hash"] == first.name and m["status"] == "complete"
    assert m["counts"] == {"planned": 5, "stored": 5, "computed": 5, "errors": 0,
                           "errors_by_kind": {}}
    assert m["overrides"] == [*TINY, f"store.root={first.parent}"]
    assert m["watchdog"] == "on" and m["quantization"]["kernel"] == "fake"
    rs = results(first)
    assert {r["id"] for r in rs} == {"bar_chart", "receipt_total", "table_lookup",
                                     "compare_shapes", "text_only"}
    assert all(r["status"] == "ok" and r["completion_tokens"] > 0 for r in rs)
    log = (first / "engine.log").read_text()
    assert log.count("\n===== ") == 1 and "fake engine: pid" in log
    # the command's end does not wait for the engine's teardown: it is killed, quietly
    assert "fake engine: shut down" not in log and "Traceback" not in log


def test_rerun_is_a_cache_hit_that_imports_no_engine(first: Path):
    before = (first / "results.jsonl").read_bytes()
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *TINY,
                        f"store.root={first.parent}"], cwd=ROOT, text=True, capture_output=True,
                       env={**os.environ, **FAKE})
    assert p.returncode == 0 and "5 cached" in p.stderr
    assert not imported_heavy(p.stderr)
    assert (first / "results.jsonl").read_bytes() == before


def test_sweep_starts_one_engine_per_engine_config_and_a_rerun_starts_nothing(tmp_path: Path):
    """12 points: 2 max_model_len (engine changes) x 3 temperatures x 2 seeds."""
    sweep = ["-m", *TINY, f"store.root={tmp_path}", "sampling.max_tokens=8",
             "model.max_model_len=2048,4096", "sampling.temperature=0,0.5,1.0",
             "sampling.seed=0,1"]
    p, seen = run_watched(*sweep, env=FAKE)
    assert p.returncode == 0, p.stderr[-4000:]
    assert left_behind(seen, tmp_path) == []
    (runs,) = tmp_path.glob(".sweeps/*/runs.json")
    rows = json.loads(runs.read_text())
    assert [r["status"] for r in rows] == ["computed"] * 12 and len({r["hash"] for r in rows}) == 12
    ms = [json.loads((Path(r["folder"]) / "manifest.json").read_text()) for r in rows]
    # jobs run in order: the first 6 share one engine, the next 6 another one
    assert [m["engine"]["starts_in_process"] for m in ms] == [1] * 6 + [2] * 6
    assert [m["engine"]["reused"] for m in ms] == ([False] + [True] * 5) * 2
    assert all(m["counts"]["stored"] == 5 for m in ms)
    # each point logs into its own folder, the reused engine's process too
    logs = [(Path(r["folder"]) / "engine.log").read_text() for r in rows]
    assert all(x.count("\n===== ") == 1 for x in logs)
    assert ["fake engine: pid" in x for x in logs] == ([True] + [False] * 5) * 2
    # the first engine shut down in order before the second started (its memory back), in
    # the log of the point that needed the start; the last one was not waited for
    assert ["fake engine: shut down" in x for x in logs] == [False] * 6 + [True] + [False] * 5
    assert "temperature=0.5" in p.stderr and "sampling.temp" not in p.stderr  # values

    again = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *sweep],
                           cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not imported_heavy(again.stderr)
    rows2 = json.loads(max(tmp_path.glob(".sweeps/*/runs.json")).read_text())
    assert [r["status"] for r in rows2] == ["cached"] * 12
    assert [r["hash"] for r in rows2] == [r["hash"] for r in rows]
    assert [(Path(r["folder"]) / "engine.log").read_text() for r in rows] == logs


def test_shards_through_submitit_fill_one_run(first: Path, tmp_path: Path):
    """Two shards as two submitit jobs (the SLURM submission path, run locally), in parallel,
    on a node that lists two GPUs: one for each job."""
    p = runner("-m", "hydra/launcher=local", *TINY, f"store.root={tmp_path}",
               "shard.count=2", "shard.index=0,1",
               env={"CUDA_VISIBLE_DEVICES": "0,1", **FAKE})
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
    assert len({m["shards"][f"{i}/2"]["pid"] for i in (0, 1)}) == 2  # two processes
    assert m["counts"]["stored"] == 5 and m["counts"]["errors"] == 0
    # reading merges the shards: the unsharded config is a cache hit
    p = runner(*TINY, f"store.root={tmp_path}", env=FAKE)
    assert p.returncode == 0 and "5 cached" in p.stderr
