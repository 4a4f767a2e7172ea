"""Composition through hydra.compose: groups, typed schemas, defaults, engine arguments."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from conftest import make_cfg
from runner.engine import engine_kwargs


def test_defaults_reproduce_the_seed_command():
    c = make_cfg()
    assert c.model.name == "pixtral-12b-2409"
    assert (c.model.tokenizer_mode, c.model.config_format, c.model.load_format) == ("mistral",) * 3
    assert c.model.path == "data/Pixtral-12B-2409"
    assert c.sampling.temperature == 0 and c.sampling.max_tokens == 256
    assert c.prompts.name == "sample"


@pytest.mark.parametrize("model", ["pixtral_12b", "pixtral_large_w4a16", "pixtral_tiny"])
@pytest.mark.parametrize("engine", ["default", "cpu"])
@pytest.mark.parametrize("sampling", ["greedy", "sampled"])
def test_every_group_option_composes(model, engine, sampling):
    c = make_cfg(f"model={model}", f"engine={engine}", f"sampling={sampling}")
    assert c.model.max_model_len and c.engine.tensor_parallel_size >= 1


@pytest.mark.parametrize("override", ["sampling.temprature=0.5", "engine.tensor_paralel_size=2",
                                      "model.tokenizer_mod=hf"])
def test_misspelled_key_fails_naming_it(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as e:
        make_cfg(override)
    assert override.split("=")[0].split(".")[1] in str(e.value) + str(e.value.__cause__)


def test_wrong_type_fails():
    with pytest.raises(ConfigCompositionException):
        make_cfg("sampling.max_tokens=lots")


def test_unknown_group_option_fails():
    with pytest.raises(ConfigCompositionException, match="pixtral_13b"):
        make_cfg("model=pixtral_13b")


def test_seed_command_engine_arguments():
    """The seed's `--model Pixtral-12B-2409 --tokenizer-mode mistral -tp 4`, as vLLM gets it."""
    c = make_cfg("engine.tensor_parallel_size=4")
    kw = engine_kwargs(c, Path("/sets/sample"))
    assert kw == {
        "model": str(Path("data/Pixtral-12B-2409").resolve()),
        "tokenizer_mode": "mistral", "config_format": "mistral", "load_format": "mistral",
        "trust_remote_code": False, "max_model_len": 16384, "limit_mm_per_prompt": {"image": 4},
        "tensor_parallel_size": 4, "pipeline_parallel_size": 1, "gpu_memory_utilization": 0.9,
        "enforce_eager": False, "dtype": "auto", "seed": 0,
        "allowed_local_media_path": "/sets/sample",
    }


def test_large_model_brings_its_tensor_parallel_size():
    c = make_cfg("model=pixtral_large_w4a16")
    kw = engine_kwargs(c, Path("/x"))
    assert kw["tensor_parallel_size"] == 4 and kw["quantization"] == "compressed-tensors"
    assert make_cfg("model=pixtral_large_w4a16", "engine.tensor_parallel_size=8"
                    ).engine.tensor_parallel_size == 8


def test_cpu_preset_sizes_kv_cache():
    kw = engine_kwargs(make_cfg("model=pixtral_tiny", "engine=cpu"), Path("/x"))
    assert kw["kv_cache_memory_bytes"] == 1 << 30 and kw["enforce_eager"] is True
    assert kw["tensor_parallel_size"] == 1


def test_extra_engine_args_pass_through_and_clash():
    c = make_cfg("+engine.extra.kv_cache_dtype=fp8")
    assert engine_kwargs(c, Path("/x"))["kv_cache_dtype"] == "fp8"
    from runner.errors import UserError

    with pytest.raises(UserError, match="max_num_seqs"):
        engine_kwargs(make_cfg("+engine.extra.max_num_seqs=4"), Path("/x"))


def test_ray_preset_hands_vllm_its_executor():
    c = make_cfg("engine=ray", "engine.tensor_parallel_size=8", "engine.pipeline_parallel_size=2")
    kw = engine_kwargs(c, Path("/x"))
    assert kw["distributed_executor_backend"] == "ray"
    assert (kw["tensor_parallel_size"], kw["pipeline_parallel_size"]) == (8, 2)


def test_slurm_launcher_composes_with_the_gpu_count_of_the_engine():
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        c = compose(config_name="config", return_hydra_config=True,
                    overrides=["hydra/launcher=slurm", "model=pixtral_large_w4a16",
                               "hydra.launcher.partition=gpu"])
    launcher = c.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 4  # follows engine.tensor_parallel_size


MODELS = sorted(p.stem for p in (Path(__file__).parent.parent / "conf" / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes_into_vllm_engine_arguments(model):
    """Every config of the model/ group composes, and what it hands vLLM are EngineArgs
    names (a hosted model hands vLLM nothing: its requests go to its API)."""
    from runner.engine.args import check_engine_args, served

    c = make_cfg(f"model={model}", "engine=cpu")
    if served(c):
        assert c.model.api.model and c.model.api.key_env
        return
    kw = engine_kwargs(c, Path("/sets"))
    check_engine_args(kw)
    assert kw["model"] == str(Path(c.model.path).resolve()) and kw["max_model_len"]


def test_the_open_columns_carry_their_documented_engine_arguments():
    """The values of conf/model/*.yaml as vLLM's examples give them (docs/models.md)."""
    kw = {m: engine_kwargs(make_cfg(f"model={m}"), Path("/x")) for m in
          ("qwen2_vl_7b", "llava_onevision_7b", "llama32_11b_vision", "mistral_small_31_24b")}
    assert kw["qwen2_vl_7b"]["mm_processor_kwargs"] == {"min_pixels": 28 * 28,
                                                        "max_pixels": 1280 * 28 * 28}
    assert kw["llava_onevision_7b"]["max_model_len"] == 16384
    assert kw["llama32_11b_vision"]["max_model_len"] == 8192
    m = kw["mistral_small_31_24b"]
    assert (m["tokenizer_mode"], m["config_format"], m["load_format"]) == ("mistral",) * 3
    assert (m["max_model_len"], m["limit_mm_per_prompt"]) == (16384, {"image": 4})
    assert m["tensor_parallel_size"] == 2
    # the processor's options are a vLLM argument that changes results: in the run hash, and
    # a config without them hashes as before the field existed (test_hash.py pins one)
    from runner.store.rundir import run_hash

    q = make_cfg("model=qwen2_vl_7b")
    assert run_hash(q) != run_hash(make_cfg("model=qwen2_vl_7b",
                                            "model.mm_processor_kwargs.max_pixels=200704"))
