"""The runner's Hydra launchers. Hydra only instantiates launchers that live under the
`hydra_plugins` namespace package, so the classes are here; what they do is
runner/launch/launchers.py.

- `hydra/launcher=grouped` (the default): one process, Hydra's basic launcher with the points
  grouped by engine arguments, so a sweep starts one engine per group.
- `hydra/launcher=ray`: the jobs of a multirun as one queue for a pool of engine workers
  (Ray actors) on the cluster at `address`, each keeping its engine across jobs.
- `hydra/launcher=local`: submitit's local executor, each job with its own slice of this
  node's GPUs (submitit gives every local job the same devices), never more jobs at once than
  the node has slots."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher as Submitit
from omegaconf import DictConfig, OmegaConf


class _Keeps(Launcher):
    """A launcher that keeps what Hydra's setup gives it; its launch is the runner's."""

    config: DictConfig | None = None
    hydra_context: HydraContext | None = None
    task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function


class GroupedLauncher(_Keeps):
    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from runner.launch.grouped import launch_grouped

        return launch_grouped(self, job_overrides, initial_job_idx)


class RayLauncher(_Keeps):
    def __init__(self, address: str | None = None, gpus_per_job: int | None = None,
                 cpus_per_job: float = 1, runtime_env: Any = None,
                 workers: int | None = None) -> None:
        self.address, self.gpus_per_job, self.cpus_per_job = address, gpus_per_job, cpus_per_job
        self.workers = workers
        env = OmegaConf.to_container(runtime_env, resolve=True) if runtime_env else {}
        self.runtime_env: dict[str, Any] = env if isinstance(env, dict) else {}

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from runner.launch.launchers import launch_ray

        return launch_ray(self, job_overrides, initial_job_idx)


class LocalLauncher(Submitit):
    def __init__(self, gpus_per_job: int | None = None, **params: Any) -> None:
        from runner.launch.launchers import NO_TIMEOUT_MIN, node_devices

        if params.get("timeout_min") is None:  # null: no limit
            params["timeout_min"] = NO_TIMEOUT_MIN
        super().__init__(**params)
        self.gpus_per_job = gpus_per_job
        self.node_devices = node_devices()  # read here, in the process that submits

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        """The jobs in waves of as many as the node has GPU slots, so no GPU ever holds two
        engines (submitit's local executor would start them all at once)."""
        from runner.launch.launchers import waves

        assert self.config is not None
        out: list[JobReturn] = []
        for start, wave in waves(self, job_overrides):
            out += super().launch(wave, initial_job_idx + start)
        return out

    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int,
                 job_id: str, singleton_state: dict[type, Singleton]) -> JobReturn:
        from runner.launch.launchers import set_devices

        set_devices(self, sweep_overrides, job_num, singleton_state)
        return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
