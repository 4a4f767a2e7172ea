"""The tiny random-weight Qwen2-VL (runner/bundled/tiny_qwen2vl.py): reproducible from code,
of the real model's shape, and run end to end through the real vLLM CPU engine with the
plan's prompt tokens equal to vLLM's for every sample item (multi-image included)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_cfg, runner
from runner.bundled import tiny_qwen2vl


@pytest.fixture(scope="module")
def qwen_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen2vl.build(tmp_path_factory.mktemp("qwen") / "qwen2-vl-tiny")


def test_the_qwen2_vl_twin_is_byte_identical_every_time(qwen_tiny: Path, tmp_path: Path):
    again = tiny_qwen2vl.build(tmp_path / "again")
    assert tiny_qwen2vl.digest(again) == tiny_qwen2vl.digest(qwen_tiny)
    assert set(tiny_qwen2vl.FILES) <= {p.name for p in qwen_tiny.iterdir()}


def test_the_qwen2_vl_twin_has_the_real_models_shape(qwen_tiny: Path):
    from transformers import AutoProcessor

    cfg = json.loads((qwen_tiny / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert cfg["model_type"] == "qwen2_vl"
    proc = AutoProcessor.from_pretrained(qwen_tiny)
    tok = proc.tokenizer
    for s in tiny_qwen2vl.SPECIAL:  # each special token is one token
        assert tok.convert_tokens_to_ids(s) == tok(s)["input_ids"][0]
    assert cfg["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    text = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?"
                    "<|im_end|>\n<|im_start|>assistant\n")


def test_the_plan_counts_the_twin_exactly_with_its_processor(qwen_tiny: Path):
    from runner.plan.load import load_plan
    from runner.plan.tokens import plan_tokens

    cfg = make_cfg("model=qwen2_vl_tiny", "engine=cpu", f"model.path={qwen_tiny}")
    toks = {t.id: t for t in plan_tokens(cfg, load_plan(cfg, show=False))}
    assert all(t.exact for t in toks.values())
    # an image's tokens: its 14-pixel patch grid, merged 2x2 (smart_resize to multiples of 28)
    assert toks["text_only"].image_tokens == 0
    assert toks["compare_shapes"].images == 2


@pytest.mark.engine
def test_the_qwen2_vl_twin_runs_the_sample_set_through_real_vllm(qwen_tiny: Path,
                                                                 tmp_path: Path):
    """One real engine start: every sample item stored, vLLM's prompt tokens equal to the
    plan's."""
    from runner.plan.load import load_plan
    from runner.plan.tokens import plan_tokens

    args = ["model=qwen2_vl_tiny", "engine=cpu", f"model.path={qwen_tiny}",
            f"store.root={tmp_path / 'store'}", "sampling.max_tokens=4"]
    r = runner(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (f,) = (tmp_path / "store").glob("*/results.jsonl")
    got = {x["id"]: x for x in map(json.loads, f.read_text().splitlines())}
    assert len(got) == 5 and all(x["status"] == "ok" for x in got.values())
    cfg = make_cfg(*args)
    want = {t.id: t.prompt_tokens for t in plan_tokens(cfg, load_plan(cfg, show=False))}
    assert {i: x["prompt_tokens"] for i, x in got.items()} == want
