"""Multirun jobs on Ray (`hydra/launcher=ray`): one queue pulled by engine workers (Ray actors)
on a live local Ray cluster, each worker's engine the fake one (a child process of the worker;
RUNNER_ENGINE=fake reaches the workers through the launcher's runtime_env, as any other
variable would). Engine starts are counted from the fake engine's trace ("start <pid>").

The cluster (one per session, shut down at the end whatever happens) has 2 CPUs and 2 GPUs
that exist only in its resource table: each worker asks for 1 GPU (engine.tensor_parallel_size),
so there are 2 workers and Ray gives each its own CUDA_VISIBLE_DEVICES.
"""

import json
import os
import signal
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import FAKE, TINY, fake_env, make_cfg, output, runner, spawn, wait_for
from runner.plan.load import load_plan

pytestmark = pytest.mark.process  # the runner's processes on the fake engine: full lane

SHARDS = ["shard.count=2", "shard.index=0,1"]


@pytest.fixture(scope="session")
def ray_address():
    import ray

    tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    ctx = ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
                   _temp_dir=tmp, _node_ip_address="127.0.0.1", logging_level="WARNING")
    try:
        yield ctx.address_info["gcs_address"]
    finally:
        ray.shutdown()


def on_ray(address: str, store: Path, *args: str, **faults: object) -> list[str]:
    env = "{" + ",".join(f"{k}:'{v}'" for k, v in fake_env(**faults).items()) + "}"
    return ["-m", "hydra/launcher=ray", f"hydra.launcher.address={address}",
            f"+hydra.launcher.runtime_env.env_vars={env}", *TINY, f"store.root={store}",
            "sampling.max_tokens=8", *args]


def rows(store: Path) -> list[dict]:
    return json.loads(max(store.glob(".sweeps/*/runs.json")).read_text())


def ids(run: Path, i: int) -> list[str]:
    f = run / f"results.{i}-of-2.jsonl"
    return sorted(json.loads(x)["id"] for x in f.read_text().splitlines()) if f.exists() else []


def the_set() -> list[str]:
    return sorted(it.id for it in load_plan(make_cfg(*TINY)).items)


def test_shards_through_ray_fill_one_run(ray_address: str, tmp_path: Path):
    """Two shards as two Ray tasks, side by side, each with its own (resource-table) GPU."""
    p = runner(*on_ray(ray_address, tmp_path, *SHARDS), timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    rs = rows(tmp_path)
    assert [r["status"] for r in rs] == ["computed"] * 2 and len({r["hash"] for r in rs}) == 1
    d = Path(rs[0]["folder"])
    parts = [ids(d, i) for i in (0, 1)]
    assert parts[0] and parts[1] and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == the_set()
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and m["counts"]["stored"] == 5 and m["counts"]["errors"] == 0
    assert m["quantization"]["kernel"] == "fake"  # the workers got the launcher's runtime_env
    shards = [m["shards"][f"{i}/2"] for i in (0, 1)]
    assert [s["computed"] for s in shards] == [len(x) for x in parts]
    # two processes, each seeing one GPU of its own, as Ray assigned them
    assert shards[0]["pid"] != shards[1]["pid"]
    assert sorted(s["devices"] for s in shards) == ["0", "1"]
    # bounded generations (not compared with an unsharded run: CPU is not batch-invariant)
    limit = yaml.safe_load((d / "config.yaml").read_text())["sampling"]["max_tokens"]
    for i in (0, 1):
        for r in map(json.loads, (d / f"results.{i}-of-2.jsonl").read_text().splitlines()):
            assert r["status"] == "ok" and 0 < r["completion_tokens"] <= limit, r
    # reading merges the shards: the unsharded config is a cache hit
    p = runner(*TINY, f"store.root={tmp_path}", "sampling.max_tokens=8", env=FAKE)
    assert p.returncode == 0 and "5 cached" in p.stderr, p.stderr[-3000:]


def test_sweep_through_ray(ray_address: str, tmp_path: Path):
    p = runner(*on_ray(ray_address, tmp_path, "sampling.temperature=0,0.5"), timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    rs = rows(tmp_path)
    assert [r["status"] for r in rs] == ["computed"] * 2 and len({r["hash"] for r in rs}) == 2
    assert [r["items"] for r in rs] == [5, 5] and all(r["tokens_per_s"] > 0 for r in rs)
    ms = [json.loads((Path(r["folder"]) / "manifest.json").read_text()) for r in rs]
    assert [m["sampling"]["temperature"] for m in ms] == [0, 0.5]
    assert all(m["status"] == "complete" and m["counts"]["stored"] == 5 for m in ms)
    assert "temperature=0.5" in p.stdout + p.stderr  # the end-of-sweep table


def starts(trace: Path) -> int:
    return sum(x.startswith("start ") for x in trace.read_text().splitlines())


def most_at_once(rs: list[dict]) -> int:
    """The most points running at the same moment, from each point's recorded start and end."""
    events = sorted([(r["start"], 1) for r in rs] + [(r["end"], -1) for r in rs],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    now = most = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def test_two_workers_run_six_points_on_two_engines(ray_address: str, tmp_path: Path):
    """3 sets x 2 shards, one engine group: each worker keeps its engine across the points it
    pulls from the queue."""
    trace = tmp_path / "trace"
    p = runner(*on_ray(ray_address, tmp_path / "store", "prompts.name=sample,letters,receipts",
                       *SHARDS, trace=str(trace)), timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "6 jobs on 2 Ray engine workers" in " ".join(p.stderr.split())
    rs = rows(tmp_path / "store")
    assert [r["status"] for r in rs] == ["computed"] * 6 and len({r["hash"] for r in rs}) == 3
    assert starts(trace) == 2 and sum(r["engine_starts"] for r in rs) == 2
    assert len({r["pid"] for r in rs}) == 2 and most_at_once(rs) <= 2
    for d in {Path(r["folder"]) for r in rs}:  # each item stored once
        got = [json.loads(x)["id"] for i in (0, 1)
               for x in (d / f"results.{i}-of-2.jsonl").read_text().splitlines()]
        m = json.loads((d / "manifest.json").read_text())
        assert len(got) == len(set(got)) == m["counts"]["stored"] and m["status"] == "complete"


def test_two_engine_groups_take_a_worker_each(ray_address: str, tmp_path: Path):
    """Sets x max_model_len: the sweeper's order alternates the engine; each worker keeps one
    group's engine (a worker per point in that order would switch engines at every point).
    Whichever worker finishes its group first, the other group's 2 jobs left are too few for a
    second engine load (tests/test_launch.py: pick), so it is 2 starts at any speed."""
    trace = tmp_path / "trace"
    p = runner(*on_ray(ray_address, tmp_path / "store", "prompts.name=sample,letters,receipts",
                       "model.max_model_len=4096,8192", trace=str(trace)), timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    rs = rows(tmp_path / "store")
    assert [r["status"] for r in rs] == ["computed"] * 6 and starts(trace) == 2
    by_pid = {r["pid"]: {r["engine"]} for r in rs}
    for r in rs:
        by_pid[r["pid"]].add(r["engine"])
    assert sorted(map(len, by_pid.values())) == [1, 1]  # one engine per worker


def test_a_killed_worker_gives_its_point_back_and_the_run_completes(
        ray_address: str, tmp_path: Path):
    gate = tmp_path / "gate"
    args = on_ray(ray_address, tmp_path, "sampling.temperature=0.3", *SHARDS)
    # both shards' engines hold before their first request until the test opens the gate
    p = spawn(*on_ray(ray_address, tmp_path, "sampling.temperature=0.3", *SHARDS,
                      gate_after=0, gate=str(gate)))
    # shard 1's lock holder is its Ray worker ("pid N on HOST")
    lock = lambda: [f for f in tmp_path.glob(".locks/*.1-of-2.lock") if f.read_text()]  # noqa: E731
    wait_for(p, lambda: bool(lock()), "shard 1 to take its lock", timeout=300)
    pid = int(lock()[0].read_text().split()[1])
    os.kill(pid, signal.SIGKILL)
    gate.touch()
    assert p.wait(timeout=300) == 0, output(p)[-4000:]
    out = " ".join(output(p).split())  # the console wraps at 80 columns
    assert "job 1: Ray worker died: " in out and "; back to the queue" in out, out[-4000:]
    rs = rows(tmp_path)
    assert [r["status"] for r in rs] == ["computed", "computed"]
    assert rs[1]["pid"] != pid  # another worker took it
    d = Path(rs[0]["folder"])
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and set(m["shards"]) == {"0/2", "1/2"}
    done = [ids(d, 0), ids(d, 1)]
    assert sorted(done[0] + done[1]) == the_set()  # each item once

    p = runner(*args, timeout=300)  # a rerun has nothing left to do
    assert p.returncode == 0, p.stderr[-4000:]
    assert [r["status"] for r in rows(tmp_path)] == ["cached", "cached"]
    assert [ids(d, 0), ids(d, 1)] == done
