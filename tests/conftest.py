"""Shared fixtures. Engine tests (marker `engine`) run `python -m runner` in real processes;
they share engine starts through a few session-scoped runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from runner.config import register

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
TINY = ["model=pixtral_tiny", "engine=cpu"]

register()


def make_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def runner(*args: str, cwd: Path = ROOT, env: dict | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m runner ARGS` in a real process, output captured."""
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def cfg_factory():
    return make_cfg
