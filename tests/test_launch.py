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
