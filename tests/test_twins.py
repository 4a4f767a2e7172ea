"""The tiny random-weight twins of Qwen2-VL and LLaVA-OneVision (runner/bundled/tiny_qwen2vl.py,
tiny_llava_ov.py): reproducible from code, of the real models' shape, and run end to end
through the real vLLM CPU engine with the plan's prompt tokens equal to vLLM's for every
sample item (the two-image one included). One real engine start per twin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, make_cfg, runner
from runner.bundled import tiny_llava_ov, tiny_qwen2vl

pytestmark = pytest.mark.slow  # builds the twins with torch (seconds): the full lane

TWINS = {"qwen2_vl_tiny": tiny_qwen2vl, "llava_onevision_tiny": tiny_llava_ov}
ARCH = {"qwen2_vl_tiny": "Qwen2VLForConditionalGeneration",
        "llava_onevision_tiny": "LlavaOnevisionForConditionalGeneration"}
# what each real model's chat template makes of one image and a question
CHAT = {"qwen2_vl_tiny": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                         "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                         "What is it?<|im_end|>\n<|im_start|>assistant\n",
        "llava_onevision_tiny": "<|im_start|>user <image>\nWhat is it?<|im_end|>"
                                "<|im_start|>assistant\n"}


@pytest.fixture(scope="module", params=sorted(TWINS))
def twin(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    name = request.param
    return name, TWINS[name].build(tmp_path_factory.mktemp(name) / name)


def test_a_twin_is_byte_identical_every_time(twin: tuple[str, Path], tmp_path: Path):
    name, folder = twin
    mod = TWINS[name]
    again = mod.build(tmp_path / "again")
    assert mod.digest(again) == mod.digest(folder)
    assert set(mod.FILES) <= {p.name for p in folder.iterdir()}


def test_a_twin_has_the_real_models_shape(twin: tuple[str, Path]):
    from transformers import AutoProcessor

    name, folder = twin
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == [ARCH[name]]
    proc = AutoProcessor.from_pretrained(folder)
    tok = proc.tokenizer
    for s in TWINS[name].SPECIAL:  # each special token is one token
        assert tok(s)["input_ids"] == [tok.convert_tokens_to_ids(s)]
    key = "image_token_id" if "image_token_id" in cfg else "image_token_index"
    assert cfg[key] == tok.convert_tokens_to_ids(proc.image_token)
    text = proc.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True, tokenize=False)
    assert text == CHAT[name]


def test_the_plan_counts_a_twin_exactly_with_its_processor(twin: tuple[str, Path]):
    from runner.plan.load import load_plan
    from runner.plan.tokens import plan_tokens

    name, folder = twin
    cfg = make_cfg(f"model={name}", "engine=cpu", f"model.path={folder}")
    toks = {t.id: t for t in plan_tokens(cfg, load_plan(cfg, show=False))}
    assert all(t.exact for t in toks.values())
    assert toks["text_only"].image_tokens == 0 and toks["compare_shapes"].images == 2
    assert toks["compare_shapes"].image_tokens > toks["bar_chart"].image_tokens > 0


@pytest.mark.engine
def test_one_sweep_over_both_twins_starts_two_engines_and_their_plans_are_exact(
        tmp_path: Path):
    """`-m sampling.temperature=0,0.5 model=qwen2_vl_tiny,llava_onevision_tiny`: the sweeper's
    order alternates the models; the grouped launcher (the default) runs them in 2 groups, so
    2 real engine starts (counted in RUNNER_ENGINE_STARTS_LOG), not 4. Every point stores every
    sample item, vLLM's prompt tokens equal to the plan's (the two-image item included); the
    card over them is one column per model."""
    from runner.plan.load import load_plan
    from runner.plan.tokens import plan_tokens

    store, log = tmp_path / "store", tmp_path / "starts"
    models = ",".join(sorted(TWINS))
    r = runner("-m", "sampling.temperature=0,0.5", f"model={models}", "engine=cpu",
               f"store.root={store}", "sampling.max_tokens=4",
               env={"RUNNER_ENGINE_STARTS_LOG": str(log)})
    starts = log.read_text().splitlines() if log.exists() else []
    if outer := os.environ.get("RUNNER_ENGINE_STARTS_LOG"):  # the suite's own count
        with open(outer, "a") as f:
            f.writelines(x + "\n" for x in starts)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(starts) == 2, starts
    rows = json.loads(max(store.glob(".sweeps/*/runs.json")).read_text())
    assert [r["status"] for r in rows] == ["computed"] * 4
    assert [r["engine_starts"] for r in rows] == [1, 1, 0, 0]  # points 0 and 1 open the groups
    for row in rows:
        name = next(o.split("=")[1] for o in row["overrides"] if o.startswith("model="))
        (f,) = Path(row["folder"]).glob("results.jsonl")
        got = {x["id"]: x for x in map(json.loads, f.read_text().splitlines())}
        assert len(got) == 5 and all(x["status"] == "ok" for x in got.values())
        cfg = make_cfg(f"model={name}", "engine=cpu")
        want = {t.id: t for t in plan_tokens(cfg, load_plan(cfg, show=False))}
        assert all(t.exact for t in want.values())
        assert {i: x["prompt_tokens"] for i, x in got.items()} == \
            {i: t.prompt_tokens for i, t in want.items()}, name
    greedy = [Path(r["folder"]).name for r in rows if "sampling.temperature=0" in r["overrides"]]
    c = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(store), "card",
                        *greedy, "--json"], cwd=ROOT, text=True, capture_output=True,
                       timeout=300)
    assert c.returncode == 0, c.stderr
    assert set(json.loads(c.stdout)["table"]["models"]) == {"qwen2-vl-tiny", "llava-onevision-tiny"}
