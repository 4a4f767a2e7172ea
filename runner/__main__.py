"""`python -m runner [overrides]`: the Hydra entry point (see README)."""

import hydra
from omegaconf import DictConfig

from runner.config import register

register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> object:
    from runner.run import main as run_main

    return run_main(cfg)


if __name__ == "__main__":
    main()
