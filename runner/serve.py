"""`python -m runner.serve [overrides]`: vLLM's OpenAI-compatible server, started from the
same model/ and engine/ configs as a run (docs/server.md); `engine=server` sends a run's
requests to it. The work is in runner/engine/server.py."""

import sys

import hydra
from omegaconf import DictConfig

from runner.config import CONF, register

register()


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg: DictConfig) -> None:
    from runner.console import console
    from runner.engine.server import serve
    from runner.errors import StartFailed, UserError

    try:
        code = serve(cfg)
    except (UserError, StartFailed) as e:
        console.print(f"[bold red]error:[/] {e}")
        code = e.exit_code
    sys.exit(code)


if __name__ == "__main__":
    main()
