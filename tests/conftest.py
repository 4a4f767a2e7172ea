"""Shared fixtures. Engine tests (marker `engine`) run `python -m runner` in real processes;
they share engine starts through a few session-scoped runs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m runner ARGS` in its own process group, not waited for; its output goes to a
    file (`output(p)`), not a pipe that could fill up while nobody reads it."""
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, text=True,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, **(env or {})})
    p.log = log  # type: ignore[attr-defined]
    return p


def output(p: subprocess.Popen) -> str:
    p.log.seek(0)  # type: ignore[attr-defined]
    return p.log.read()  # type: ignore[attr-defined]


def wait_for(p: subprocess.Popen, done: Callable[[], bool], what: str,
             timeout: float = 600) -> None:
    """Poll a condition on files the runner writes, failing at once if the runner exits."""
    end = time.monotonic() + timeout
    while not done():
        assert p.poll() is None, output(p)[-3000:]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    """The bundled tiny Pixtral in data/, built if missing: exact token plans read its
    tokenizer, and a fresh clone's fast lane runs before any engine test has built it."""
    from runner.fixtures import tiny

    return tiny.build(ROOT / "data" / "pixtral-tiny")
