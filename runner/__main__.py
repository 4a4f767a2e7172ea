"""`python -m runner [overrides]`: the Hydra entry point (see README). One job per config;
an error a user can cause is one sentence and an exit code, and in a sweep the next job runs.
The command ends once its results are durable and shown (runner/launch/ending.py)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from runner.config import CONF, register

register()


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> object:
    from hydra.core.hydra_config import HydraConfig

    from runner.console.display import show, show_error
    from runner.console.summary import Summary
    from runner.errors import STOPS, Interrupted, disk_full, exit_code
    from runner.job.recipe import Job
    from runner.launch.sweep import in_multirun

    try:
        try:
            s = Job(cfg, list(HydraConfig.get().overrides.task)).run()
        except OSError as e:  # a full disk is the user's to fix, like any path
            raise disk_full(e, Path(cfg.store.root).resolve()) or e from None
    except (Interrupted, KeyboardInterrupt, *STOPS) as e:
        show_error(e)
        if isinstance(e, STOPS) and in_multirun():
            return Summary(None, None, cfg.model.name, cfg.prompts.name, "failed", error=str(e))
        sys.exit(exit_code(e))
    show(s)
    return s


if __name__ == "__main__":
    from runner.launch.ending import leave

    try:
        main()
    except SystemExit as e:
        leave(e.code)
    leave(0)
