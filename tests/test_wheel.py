"""A wheel built from this checkout runs from an empty folder: its configs and sample sets are
inside it (setup.py), Hydra finds them there, and the sample dry run plans the 5 items."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.process


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300)


def test_a_wheel_runs_cfg_job_and_the_sample_dry_run_from_an_empty_folder(tmp_path: Path):
    src, dist, site, empty = (tmp_path / n for n in ("src", "dist", "site", "empty"))
    # A clean copy of the tracked files: the build never writes into the checkout.
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes((ROOT / f).read_bytes())
    p = run("-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
            str(src), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = dist.glob("pixtral_runner-*.whl")
    p = run("-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel),
            cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install

    p = run("-c", "import runner; print(runner.__file__)", cwd=empty, env=env)
    assert Path(p.stdout.strip()).is_relative_to(site), p.stdout + p.stderr

    p = run("-m", "runner", "--cfg", "job", cwd=empty, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "tokenizer_mode: mistral" in p.stdout and "name: sample" in p.stdout

    p = run("-m", "runner", "model=pixtral_tiny", "engine=cpu", "dry_run=true", cwd=empty,
            env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    out = " ".join((p.stdout + p.stderr).split())
    assert "5 planned" in out and "84892ccf5a8fd8fa" in out
    assert list(empty.iterdir()) == []  # a dry run writes nothing
