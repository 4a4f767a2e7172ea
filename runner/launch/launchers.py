"""What the runner's Hydra launchers do (hydra_plugins/runner_launchers holds the classes).

Ray: each job of a multirun (a shard, a sweep point) is one Ray task holding its own engine,
with `gpus_per_job` GPUs (Ray gives it those devices in CUDA_VISIBLE_DEVICES) and
`cpus_per_job` CPUs. The task runs Hydra's `run_job` in the worker, as submitit does, so the
job's callbacks (runner/launch/sweep.py) run there and its JobReturn comes back to the sweep.
A worker that dies fails its job only: the sweep table names it and says why.

Local (submitit on this machine): jobs run side by side on one node, so job n takes the n-th
slice of the node's GPUs; submitit itself would give each job the same ones."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

from runner.console import console
from runner.console.summary import Summary


def node_devices() -> list[str]:
    """This node's GPUs as CUDA_VISIBLE_DEVICES lists them: the ones this process may see,
    else every GPU the NVIDIA driver lists (no torch import)."""
    if (env := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    gpus = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(gpus.iterdir())))] if gpus.is_dir() else []


def gpus_for(cfg: DictConfig, per_job: int | None) -> int:
    """A job's GPUs: `per_job` when set, else what its engine uses (tensor x pipeline)."""
    if per_job is not None:
        return per_job
    return int(cfg.engine.tensor_parallel_size or 1) * int(cfg.engine.pipeline_parallel_size or 1)


def slice_for(job_num: int, devices: list[str], per_job: int) -> list[str]:
    """Job n's devices on a node it shares: the (n mod slots)-th run of `per_job` of them
    (all of them when there are fewer than `per_job`; none when `per_job` is 0)."""
    slots = len(devices) // per_job if per_job else 0
    if per_job and not slots:
        return devices
    k = job_num % slots if slots else 0
    return devices[k * per_job:(k + 1) * per_job]


def set_devices(launcher: Any, overrides: list[str], job_num: int,
                singleton_state: dict[type, Singleton]) -> None:
    """In a local job's process, before anything imports torch: its slice of the node's GPUs."""
    if not launcher.node_devices:
        return
    Singleton.set_state(singleton_state)
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
    mine = slice_for(job_num, launcher.node_devices, gpus_for(cfg, launcher.gpus_per_job))
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)


# --- Ray ----------------------------------------------------------------------------------


def run_point(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
              overrides: list[str], job_num: int,
              singleton_state: dict[type, Singleton]) -> JobReturn:
    """One job, in a Ray worker: Hydra's singletons restored, then Hydra's own `run_job`."""
    import ray

    Singleton.set_state(singleton_state)
    setup_globals()
    cfg = hydra_context.config_loader.load_sweep_config(config, overrides)
    with open_dict(cfg.hydra.job) as job:
        job.id = ray.get_runtime_context().get_task_id()
        job.num = job_num
    return run_job(hydra_context=hydra_context, task_function=task_function, config=cfg,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def connect(address: str | None, runtime_env: dict[str, Any]) -> None:
    """`address` null: Ray's own rule (RAY_ADDRESS, else a cluster started on this machine with
    `ray start`, else a new local one). The driver's sys.path reaches workers on this node."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, runtime_env=runtime_env or None, include_dashboard=False,
                 logging_level="WARNING")


def why(e: Exception) -> str:
    import ray.exceptions as rx

    if isinstance(e, rx.RayTaskError):
        return f"the Ray task failed: {e.cause!r}"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"Ray worker died: {first}"


def lost(hydra_context: HydraContext, cfg: DictConfig, overrides: list[str], job_num: int,
         reason: str) -> JobReturn:
    """A job whose worker died never reached its callbacks: record it here, as the job would
    have recorded a failure (a failed Summary), so the sweep table lists it."""
    with open_dict(cfg.hydra.job) as job:
        job.num = job_num
    HydraConfig.instance().set_config(cfg)
    out = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    with read_write(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(out.absolute())
    s = Summary(None, None, cfg.model.name, cfg.prompts.name, "failed", error=reason)
    jr = JobReturn(overrides=overrides, cfg=cfg, hydra_cfg=cfg.hydra, working_dir=str(out),
                   status=JobStatus.COMPLETED, _return_value=s)
    hydra_context.callbacks.on_job_end(config=cfg, job_return=jr)
    return jr


def launch_ray(launcher: Any, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> list[JobReturn]:
    import ray

    config, ctx = launcher.config, launcher.hydra_context
    connect(launcher.address, launcher.runtime_env)
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    task = ray.remote(run_point)
    state = Singleton.get_state()
    jobs = []
    for i, ov in enumerate(job_overrides):
        n, ov = initial_job_idx + i, list(ov)
        cfg = ctx.config_loader.load_sweep_config(config, ov)
        gpus = gpus_for(cfg, launcher.gpus_per_job) if has_gpus else 0
        console.print(f"job {n} on Ray ({gpus} GPU, {launcher.cpus_per_job} CPU): "
                      f"{' '.join(ov)}")
        ref = task.options(num_gpus=gpus, num_cpus=launcher.cpus_per_job, max_retries=0,
                           name=f"runner job {n}").remote(ctx, launcher.task_function, config,
                                                           ov, n, state)
        jobs.append((n, ov, cfg, ref))
    returns = []
    try:
        for n, ov, cfg, ref in jobs:
            try:
                returns.append(ray.get(ref))
            except ray.exceptions.RayError as e:
                returns.append(lost(ctx, cfg, ov, n, why(e)))
    except KeyboardInterrupt:
        for *_, ref in jobs:
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.shutdown()  # a local Ray this process started ends with it
    return returns
