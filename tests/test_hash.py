"""The run hash: stable, order-independent, blind to runtime knobs, sensitive to results."""

import pytest

from conftest import make_cfg
from runner.store.rundir import hashed_config, run_hash


def h(*o: str) -> str:
    return run_hash(make_cfg(*o))


def test_stable_and_order_independent():
    a = h("model=pixtral_tiny", "sampling.temperature=0.7", "sampling.top_p=0.9")
    assert a == h("sampling.top_p=0.9", "model=pixtral_tiny", "sampling.temperature=0.7")
    assert len(a) == 16 and int(a, 16) >= 0


@pytest.mark.parametrize("knob", [
    "engine.tensor_parallel_size=8", "engine.pipeline_parallel_size=2",
    "engine.gpu_memory_utilization=0.5", "engine.max_num_seqs=8",
    "engine.max_num_batched_tokens=4096", "engine.enforce_eager=true", "engine=cpu",
    "store.root=/elsewhere", "store.wait=false", "prompts.limit=2", "prompts.root=prompts",
    "+engine.extra.enable_prefix_caching=false", "+engine.env.VLLM_CPU_KVCACHE_SPACE=4",
    "model.hf_repo=someone/else", "dry_run=true",
])
def test_runtime_knobs_do_not_change_the_hash(knob):
    assert h(knob) == h()


@pytest.mark.parametrize("change", [
    "sampling.temperature=0.5", "sampling.max_tokens=64", "sampling.seed=1", "sampling=sampled",
    "sampling.stop=[END]", "model=pixtral_tiny", "model.path=/data/other",
    "model.max_model_len=8192", "model.quantization=fp8", "model.tokenizer_mode=hf",
    "engine.dtype=float16", "engine.seed=1", "+engine.extra.kv_cache_dtype=fp8",
    "prompts.name=other", "prompts.system=Be brief.",
])
def test_result_changing_fields_change_the_hash(change):
    assert h(change) != h()


def test_hashed_config_is_what_the_readme_says():
    c = hashed_config(make_cfg())
    assert set(c) == {"model", "engine", "sampling", "prompts"}
    assert set(c["engine"]) == {"dtype", "seed", "extra"}
    assert "tensor_parallel_size" not in c["model"] and "path" in c["model"]
    assert set(c["prompts"]) == {"name", "system"}


def test_the_sample_runs_hash_is_pinned():
    """Typed structured outputs (all fields unset) left every existing hash as it was."""
    assert run_hash(make_cfg("model=pixtral_tiny", "engine=cpu")) == "84892ccf5a8fd8fa"


def test_structured_outputs_are_typed_fields():
    from hydra.errors import ConfigCompositionException

    a = make_cfg("sampling.structured_outputs.choice=[A,B,C,D]")  # no `+` needed
    b = make_cfg("+sampling.structured_outputs={choice:[A,B,C,D]}")
    assert list(a.sampling.structured_outputs.choice) == ["A", "B", "C", "D"]
    assert run_hash(a) == run_hash(b) != run_hash(make_cfg())
    with pytest.raises(ConfigCompositionException, match="choise"):
        make_cfg("sampling.structured_outputs.choise=[A,B]")
