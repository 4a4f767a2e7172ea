"""What the runner's Hydra launchers do (hydra_plugins/runner_launchers holds the classes).

Ray: the jobs of a multirun (shards, sweep points) are one queue pulled by a pool of engine
workers, Ray actors with `gpus_per_job` GPUs each (Ray gives each its devices in
CUDA_VISIBLE_DEVICES) and `cpus_per_job` CPUs: as many as the cluster's GPUs hold, so a node's
GPUs are all busy and none is shared. A worker keeps its engine loaded across the jobs it
pulls. It runs Hydra's `run_job` for each, as submitit does, so the job's callbacks
(runner/launch/sweep.py) run there and its JobReturn comes back to the sweep. A worker that
dies gives its job back to the queue.

Local (submitit on this machine): jobs run side by side on one node, as many at once as the
node has GPU slots; job n takes the (n mod slots)-th slice of the node's GPUs (submitit itself
would give each job the same ones). Each job is its own process with its own engine."""

from __future__ import annotations

import os
from collections import Counter
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


NO_TIMEOUT_MIN = 60 * 24 * 365 * 10  # `timeout_min: null`: submitit takes minutes, not None


def waves(launcher: Any, job_overrides: Sequence[Sequence[str]]
          ) -> list[tuple[int, list[Sequence[str]]]]:
    """The local launcher's jobs as (first index, jobs) waves of at most `slots` jobs, the node's
    GPUs over the most any job needs; one wave when the node lists no GPU (engines on CPU).
    Job n's slice is n mod slots, so the jobs of a wave never share a GPU."""
    jobs = list(job_overrides)
    per = max((gpus_for(launcher.hydra_context.config_loader.load_sweep_config(
        launcher.config, list(ov)), launcher.gpus_per_job) for ov in jobs), default=0)
    slots = len(launcher.node_devices) // per if per and launcher.node_devices else 0
    size = max(slots, 1) if launcher.node_devices and per else len(jobs) or 1
    return [(i, jobs[i:i + size]) for i in range(0, len(jobs), size)]


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


class Worker:
    """A Ray actor holding its GPUs and, between points, its engine (the process's engine slot,
    runner/engine/slot.py): the points it runs one after another reuse the engine while their
    engine arguments are equal."""

    def run(self, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
            overrides: list[str], job_num: int,
            singleton_state: dict[type, Singleton]) -> JobReturn:
        return run_point(hydra_context, task_function, config, overrides, job_num,
                         singleton_state)

    def stop(self) -> None:
        """The engine shut down in order (its processes and memory freed) before the actor
        goes."""
        from runner.engine import SLOT

        SLOT.shutdown()


def pool_size(resources: dict[str, float], gpus: int, cpus: float, workers: int | None,
              jobs: int) -> int:
    """How many engine workers: `workers` when set, else as many as the cluster's GPUs hold
    at `gpus` each (its CPUs at `cpus` each when it has no GPU); never more than the jobs."""
    if workers is None:
        workers = int(resources.get("GPU", 0) // gpus) if gpus else \
            int(resources.get("CPU", 1) // (cpus or 1))
    return max(1, min(workers, jobs))


def pick(pending: list[int], keys: list[str], mine: str | None,
         others: list[str | None]) -> int | None:
    """A worker's next job, or None (it waits, its engine loaded, for the end or a requeue).
    `others`: the other workers' engine keys. First a job its engine serves; else one of a
    group no other worker serves; else, for a fresh worker (no engine yet: its load is the one
    its GPUs are there for), the next job; else a second engine load in this worker only when
    the group still holds two jobs for each engine that would serve it, a load worth paying
    for. The rule reads only the queue, never how fast the workers go, so a sweep of
    2 groups x 3 points on 2 workers loads 2 engines, whichever worker finishes first."""
    for j in pending:
        if keys[j] == mine:
            return j
    free = next((j for j in pending if keys[j] not in others), None)
    if free is not None or mine is None:
        return pending[0] if free is None else free
    left = Counter(keys[j] for j in pending)
    return next((j for j in pending if left[keys[j]] >= 2 * (others.count(keys[j]) + 1)), None)


def launch_ray(launcher: Any, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> list[JobReturn]:
    """The jobs as one queue, grouped by engine arguments, pulled by a pool of engine workers
    (`Worker` actors), each on its own GPUs. A worker takes the next job of the group its engine
    serves while there is one, else as `pick` says. A worker that dies gives its job back to the
    queue (once: a job that kills two workers fails) and a new worker takes its place; the
    store's resume keeps what the dead one stored."""
    import ray

    from runner.launch.grouped import by_engine, engine_key

    config, ctx = launcher.config, launcher.hydra_context
    connect(launcher.address, launcher.runtime_env)
    resources = ray.cluster_resources()
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    cfgs = [ctx.config_loader.load_sweep_config(config, list(ov)) for ov in job_overrides]
    for i, cfg in enumerate(cfgs):
        with open_dict(cfg.hydra.job) as job:
            job.num = initial_job_idx + i
    keys = [engine_key(c) for c in cfgs]
    gpus = max(gpus_for(c, launcher.gpus_per_job) for c in cfgs) \
        if resources.get("GPU", 0) > 0 else 0
    cpus = launcher.cpus_per_job
    n = pool_size(resources, gpus, cpus, launcher.workers, len(cfgs))
    actor = ray.remote(num_gpus=gpus, num_cpus=cpus, max_restarts=0)(Worker)
    groups = by_engine(keys)
    console.print(f"{len(cfgs)} jobs on {n} Ray engine worker{'s' * (n != 1)} ({gpus} GPU, "
                  f"{cpus} CPU each), {len(groups)} group{'s' * (len(groups) != 1)} of equal "
                  "engine arguments", highlight=False)
    pending = [i for g in groups for i in g]
    workers: dict[Any, str | None] = {actor.remote(): None for _ in range(n)}  # -> its engine
    idle, running = list(workers), {}
    returns: dict[int, JobReturn] = {}
    tries: dict[int, int] = {}
    state = Singleton.get_state()
    try:
        while pending or running:
            for w in list(idle):
                others = [k for x, k in workers.items() if x != w]
                i = pick(pending, keys, workers[w], others) if pending else None
                if i is None and pending and not running and w is idle[-1]:
                    i = pending[0]  # never all waiting: the last idle worker takes the next
                if i is None:
                    continue
                idle.remove(w)
                pending.remove(i)
                workers[w] = keys[i]  # the engine it holds from this job on
                ov = list(job_overrides[i])
                console.print(f"job {initial_job_idx + i} on Ray: {' '.join(ov)}",
                              highlight=False)
                running[w.run.remote(ctx, launcher.task_function, config, ov,
                                     initial_job_idx + i, state)] = (w, i)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            w, i = running.pop(ref)
            try:
                returns[i] = ray.get(ref)
                idle.append(w)
            except ray.exceptions.RayActorError as e:  # the worker died: a new one
                del workers[w]
                tries[i] = tries.get(i, 0) + 1
                if tries[i] < 2:
                    console.print(f"[yellow]job {initial_job_idx + i}: {why(e)}; back to "
                                  "the queue")
                    pending.insert(0, i)
                else:
                    returns[i] = lost(ctx, cfgs[i], list(job_overrides[i]),
                                      initial_job_idx + i, why(e))
                if pending:
                    fresh = actor.remote()
                    workers[fresh] = None
                    idle.append(fresh)
            except ray.exceptions.RayError as e:
                returns[i] = lost(ctx, cfgs[i], list(job_overrides[i]), initial_job_idx + i,
                                  why(e))
                idle.append(w)
    except KeyboardInterrupt:
        for w in workers:  # an actor's task cannot be force-cancelled: the actor goes
            ray.kill(w)
        raise
    finally:
        stops = [w.stop.remote() for w in workers if w not in {x for x, _ in running.values()}]
        try:
            ray.get(stops, timeout=120)
        except ray.exceptions.RayError:
            pass  # a worker that cannot stop in order goes with the actor
        ray.shutdown()  # the actors (and a local Ray this process started) end with it
    return [returns[i] for i in range(len(cfgs))]
