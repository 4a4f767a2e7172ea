"""The launchers' rules, without a cluster or an engine (tests/test_ray.py runs them)."""

import pytest

from conftest import TINY, make_cfg
from runner.launch.launchers import gpus_for, node_devices, slice_for, why


def test_a_job_takes_its_own_slice_of_the_node_s_devices():
    four = ["0", "1", "2", "3"]
    assert [slice_for(n, four, 2) for n in range(3)] == [["0", "1"], ["2", "3"], ["0", "1"]]
    assert [slice_for(n, four, 1) for n in range(4)] == [["0"], ["1"], ["2"], ["3"]]
    assert slice_for(1, ["4", "7"], 1) == ["7"]  # the ids the parent was given
    assert slice_for(0, four, 0) == []  # no GPU: none visible
    assert slice_for(1, ["0"], 2) == ["0"]  # fewer than a job needs: all of them


def test_gpus_per_job_follow_the_engine_unless_set():
    assert gpus_for(make_cfg(*TINY), None) == 1
    two_by_two = make_cfg(*TINY, "engine.tensor_parallel_size=2",
                          "engine.pipeline_parallel_size=2")
    assert gpus_for(two_by_two, None) == 4 and gpus_for(two_by_two, 0) == 0


def test_node_devices_are_what_the_parent_may_see(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert node_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert node_devices() == []


def test_a_dead_worker_is_one_sentence():
    from ray.exceptions import WorkerCrashedError

    assert why(WorkerCrashedError()).startswith("Ray worker died: The worker died unexpectedly")


@pytest.mark.parametrize("name", ["ray", "local"])
def test_hydra_finds_and_builds_the_launchers(name: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.plugins import Plugins

    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        c = compose(config_name="config", return_hydra_config=True,
                    overrides=[f"hydra/launcher={name}", *TINY])
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=None, task_function=None, config=c)  # type: ignore[arg-type]
    assert type(launcher).__name__ == {"ray": "RayLauncher", "local": "LocalLauncher"}[name]
    assert launcher.gpus_per_job is None  # null: what the engine uses


def test_a_worker_takes_its_own_group_else_one_nobody_serves():
    from runner.launch.launchers import pick, pool_size

    keys = ["x", "y", "x", "y"]
    assert pick([0, 1, 2, 3], keys, "y", ["x"]) == 1  # its engine's group first
    assert pick([0, 1, 2, 3], keys, None, ["x"]) == 1  # a fresh worker: the group left alone
    assert pick([0, 2], keys, None, ["x"]) == 0  # every group served: a fresh one takes the next
    assert pick([0, 2], keys, "z", ["y"]) == 0  # a group nobody serves: worth its load
    # a loaded worker whose group ran out joins a served group only with two jobs per engine
    assert pick([1, 3], keys, "x", ["y"]) is None  # 2 jobs, would be 2 engines: it waits
    keys = ["x"] + ["y"] * 6
    assert pick([1, 2, 3, 4], keys, "x", ["y"]) == 1  # 4 jobs for 2 engines
    assert pick([1, 2, 3, 4, 5], keys, "x", ["y", "y"]) is None  # 5 jobs for 3
    assert pick([1, 2, 3, 4, 5, 6], keys, "x", ["y", "y"]) == 1  # 6 jobs for 3
    # as many workers as the GPUs hold, never more than the jobs
    assert pool_size({"GPU": 8, "CPU": 64}, 4, 1, None, 20) == 2
    assert pool_size({"GPU": 2, "CPU": 2}, 1, 1, None, 6) == 2
    assert pool_size({"GPU": 8}, 1, 1, None, 3) == 3
    assert pool_size({"CPU": 2}, 0, 1, None, 6) == 2 and pool_size({}, 0, 1, 5, 6) == 5


def test_local_jobs_run_in_waves_of_the_node_s_gpu_slots():
    from types import SimpleNamespace

    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from runner.launch.launchers import waves

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        c = compose(config_name="config", return_hydra_config=True, overrides=list(TINY))
    loader = SimpleNamespace(load_sweep_config=lambda cfg, ov: make_cfg(*TINY, *ov))
    ctx = SimpleNamespace(config_loader=loader)
    jobs = [[f"shard.index={i}", "shard.count=5"] for i in range(5)]

    def sizes(devices: list[str], *extra: str) -> list[tuple[int, int]]:
        la = SimpleNamespace(hydra_context=ctx, config=c, node_devices=devices, gpus_per_job=None)
        return [(s, len(w)) for s, w in waves(la, [[*j, *extra] for j in jobs])]

    assert sizes(["0", "1"]) == [(0, 2), (2, 2), (4, 1)]
    assert sizes(["0", "1", "2", "3"], "engine.tensor_parallel_size=2") == [(0, 2), (2, 2),
                                                                            (4, 1)]
    assert sizes(["0"], "engine.tensor_parallel_size=2") == [(0, 1)] * 1 + [
        (i, 1) for i in range(1, 5)]  # fewer GPUs than a job needs: one at a time
    assert sizes([]) == [(0, 5)]  # no GPU: engines on CPU, all at once
