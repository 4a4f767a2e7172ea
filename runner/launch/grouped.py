"""A sweep's points in one process, grouped by engine: `hydra/launcher=grouped` (the default).

Hydra's own basic launcher runs the points in the order its sweeper lists them, so
`-m prompts=a,b model=x,y` alternates x, y, x, y and the process's engine slot
(runner/engine/slot.py) starts an engine at every point. Here the points run grouped by what
their engine is (its arguments and environment, the key the slot compares), in the order each
group first appears; each point keeps its own number, output folder and row. So a sweep
starts one engine per group (plus restarts after deaths), whatever the order of its axes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)  # Hydra's launcher lines, as its basic launcher logs them


def engine_key(cfg: DictConfig) -> str:
    """What decides whether two points share an engine: the engine's arguments and environment
    as the job will compute them (runner/engine/args.py), with the media root it will have (a
    benchmark's set lives in the store's benchmark cache). Only the order of the points depends
    on it: a point whose set lies outside prompts.root may still start its own engine. A config
    the engine cannot take is a group of its own (the point fails on its own when it runs)."""
    from runner.benchmarks.preset import cache_root
    from runner.engine.args import engine_spec
    from runner.plan.load import shipped_root

    try:
        root = cache_root(cfg.store.root) if cfg.prompts.get("benchmark") else \
            shipped_root(cfg.prompts.root) or Path(cfg.prompts.root).resolve()
        kw, env = engine_spec(cfg, root)
    except Exception as e:  # noqa: BLE001 - a config the job itself will refuse, in its words
        return f"error: {e}"
    return repr(sorted(kw.items())) + repr(sorted(env.items()))


def by_engine(keys: Sequence[str]) -> list[list[int]]:
    """The points' indices in groups of equal keys, groups in the order they first appear,
    points in their own order within a group."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return list(groups.values())


def starts_line(groups: list[list[int]], first: int, served: Sequence[bool] = ()) -> str:
    """The dry run's and the sweep's promise: how many engines the points need. `served`:
    per point, whether it asks a server or a hosted model's API (runner/engine/args.py:
    served), which loads no engine here."""
    order = " | ".join(" ".join(f"#{first + i}" for i in g) for g in groups)
    n, asks = sum(map(len, groups)), sum(bool(served) and served[g[0]] for g in groups)
    loads = len(groups) - asks
    return (f"{n} points, {loads} engine start{'s' * (loads != 1)} at most "
            f"(points grouped by engine arguments: {order}"
            + (f"; {asks} group{'s' * (asks != 1)} asking a server or an API, no engine"
               if asks else "") + "); a point already stored starts none")


def launch_grouped(launcher: Any, job_overrides: Sequence[Sequence[str]],
                   initial_job_idx: int) -> list[JobReturn]:
    """Hydra's BasicLauncher.launch, in engine groups: each job keeps the number (and so the
    folder <sweep>/<num>) it has in the sweeper's order; the returns come back in that order."""
    setup_globals()
    config, ctx = launcher.config, launcher.hydra_context
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    cfgs = [ctx.config_loader.load_sweep_config(config, list(ov)) for ov in job_overrides]
    for i, cfg in enumerate(cfgs):
        with open_dict(cfg):
            cfg.hydra.job.id = cfg.hydra.job.num = initial_job_idx + i
    from runner.engine.args import served

    groups = by_engine([engine_key(c) for c in cfgs])
    log.info(starts_line(groups, initial_job_idx, [served(c) for c in cfgs]))
    returns: dict[int, JobReturn] = {}
    for i in (i for g in groups for i in g):
        log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
        returns[i] = run_job(hydra_context=ctx, task_function=launcher.task_function,
                             config=cfgs[i], job_dir_key="hydra.sweep.dir",
                             job_subdir_key="hydra.sweep.subdir")
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return [returns[i] for i in range(len(cfgs))]
