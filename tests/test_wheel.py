"""`python -m build` on this checkout gives an sdist, then a wheel built from the unpacked sdist
(as a package is published), and that wheel runs from an empty folder: its configs and sample
sets are inside it (setup.py, from the sdist's conf/ and prompts/: MANIFEST.in), Hydra finds them
there, and the sample dry run plans the 5 items."""

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.process


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300)


def test_a_wheel_built_from_the_sdist_runs_cfg_job_and_the_sample_dry_run_from_an_empty_folder(
        tmp_path: Path):
    src, dist, site, empty = (tmp_path / n for n in ("src", "dist", "site", "empty"))
    # A clean copy of the tracked files: the build never writes into the checkout.
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_bytes((ROOT / f).read_bytes())
    # No flag: the sdist, then the wheel from it. No isolation: this venv's setuptools, offline.
    p = run("-m", "build", "--no-isolation", "--outdir", str(dist), str(src), cwd=tmp_path)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    (sdist,) = dist.glob("pixtral_runner-*.tar.gz")
    (wheel,) = dist.glob("pixtral_runner-*.whl")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"setup.py", "pyproject.toml", "conf/config.yaml", "prompts/sample/set.yaml"} <= names
    with zipfile.ZipFile(wheel) as z:  # the package data too (the harness, the engine's args)
        inside = set(z.namelist())
    code = [f for f in files if f.startswith(("runner/", "hydra_plugins/")) and
            not f.endswith("ruff.toml")]
    assert code and [f for f in code if f not in inside] == []
    assert "runner/_shipped/conf/config.yaml" in inside
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
