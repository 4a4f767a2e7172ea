"""Typed configs, one dataclass per stage; `conf/` groups fill them.

Field names are vLLM's (`EngineArgs`, `SamplingParams`). Registered in Hydra's ConfigStore so
a misspelled key in YAML or on the command line fails at composition, naming the key.
Fields with `metadata={"hash": False}` are runtime knobs: they do not change results and are
left out of the run hash (see `runner.store.run_hash`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

RUNTIME = {"hash": False}


@dataclass
class ModelConfig:
    name: str = MISSING  # identity, e.g. pixtral-12b-2409
    path: str = MISSING  # local weights folder, vLLM's `model`
    hf_repo: str | None = field(default=None, metadata=RUNTIME)  # told when path is missing
    build: str | None = field(default=None, metadata=RUNTIME)  # "tiny": built on first use
    tokenizer: str | None = None
    tokenizer_mode: str = "auto"
    config_format: str = "auto"
    load_format: str = "auto"
    quantization: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    max_model_len: int | None = None
    limit_mm_per_prompt: dict[str, int] = field(default_factory=lambda: {"image": 4})
    # What this model needs; engine.tensor_parallel_size defaults to it.
    tensor_parallel_size: int = field(default=1, metadata=RUNTIME)


@dataclass
class EngineConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enforce_eager: bool = False
    distributed_executor_backend: str | None = None
    kv_cache_memory_bytes: int | None = None
    dtype: str = "auto"
    seed: int = 0
    # Any other vLLM EngineArgs field, checked against EngineArgs before the engine starts.
    extra: dict[str, Any] = field(default_factory=dict)
    # Environment for vLLM (VLLM_CPU_KVCACHE_SPACE, VLLM_CPU_OMP_THREADS_BIND, ...).
    env: dict[str, str] = field(default_factory=dict)
    # The runner's own fault handling (runner/supervise.py), not vLLM arguments.
    max_restarts: int = 2  # engine restarts per invocation after it dies
    stall_timeout_s: float | None = 300.0  # no step returned for this long: dead; null: off


# Engine fields that change results; every other engine field is a runtime knob.
ENGINE_HASHED = ("dtype", "seed", "extra")
# EngineArgs names under engine.extra that do not change results.
RUNTIME_ENGINE_ARGS = frozenset({
    "swap_space", "cpu_offload_gb", "block_size", "enable_prefix_caching", "disable_log_stats",
    "data_parallel_size", "max_parallel_loading_workers", "disable_custom_all_reduce",
    "enable_chunked_prefill", "max_num_partial_prefills", "scheduling_policy", "download_dir",
    "worker_cls", "mm_processor_cache_gb", "async_scheduling", "compilation_config",
    "kv_cache_dtype_skip_layers", "safetensors_load_strategy",
})


@dataclass
class SamplingConfig:
    """vLLM SamplingParams; defaults are vLLM's own."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False


@dataclass
class PromptsConfig:
    name: str = "sample"  # a set under `root`: <root>/<name>/set.yaml (or a file path)
    root: str = field(default="prompts", metadata=RUNTIME)
    system: str | None = None  # system prompt for items that have none
    limit: int | None = field(default=None, metadata=RUNTIME)  # first N items only
    # Image handling (runner/images.py). Not hashed: item keys cover the image bytes and the
    # conversion settings, so a changed max_image_size recomputes exactly the items it changes.
    allow_remote: bool = field(default=False, metadata=RUNTIME)  # fetch http(s) images
    max_image_pixels: int = field(default=89_478_485, metadata=RUNTIME)  # bomb guard
    max_image_size: int | None = field(default=None, metadata=RUNTIME)  # longest side cap
    on_item_error: str = field(default="skip", metadata=RUNTIME)  # skip | fail


@dataclass
class StoreConfig:
    root: str = "outputs"
    wait: bool = True  # wait for another process writing the same run, else exit at once
    fsync_every: int = 16  # items per fsync of results.jsonl ...
    fsync_seconds: float = 2.0  # ... or this many seconds, whichever comes first


@dataclass
class ShardConfig:
    """Data-parallel shards of one run: job `index` of `count` takes the items whose key
    falls in its residue class; all shards fill one run folder. Not part of the hash."""

    index: int = 0
    count: int = 1


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    dry_run: bool = False  # plan and report what would run; never starts the engine


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
