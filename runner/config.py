"""Stage 1, config: typed dataclasses, one per stage; `conf/` groups fill them.

Field names are vLLM's (`EngineArgs`, `SamplingParams`). Registered in Hydra's ConfigStore so
a misspelled key in YAML or on the command line fails at composition, naming the key.

Each field says here, and only here, whether it changes results (`hash`: in the run hash)
and, in the model and engine groups, whether it is a vLLM engine argument (`vllm`).
`hashed_config` and `engine_args` read those marks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from runner.sampling import SamplingConfig, checked_sampling

RUNTIME = {"hash": False}  # a runtime knob: does not change results
OURS = {"vllm": False}  # ours, not a vLLM engine argument (changes results)
RUNTIME_OURS = RUNTIME | OURS  # ours, and does not change results


@dataclass
class ModelConfig:
    name: str = field(default=MISSING, metadata=OURS)  # identity, e.g. pixtral-12b-2409
    # local weights folder: vLLM's `model` (resolved to an absolute path by engine_kwargs)
    path: str = field(default=MISSING, metadata=OURS)
    hf_repo: str | None = field(default=None, metadata=RUNTIME_OURS)  # told when path is missing
    build: str | None = field(default=None, metadata=RUNTIME_OURS)  # "tiny": built on first use
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
    tensor_parallel_size: int = field(default=1, metadata=RUNTIME_OURS)


@dataclass
class EngineConfig:
    tensor_parallel_size: int = field(default=1, metadata=RUNTIME)
    pipeline_parallel_size: int = field(default=1, metadata=RUNTIME)
    gpu_memory_utilization: float = field(default=0.9, metadata=RUNTIME)
    max_num_seqs: int | None = field(default=None, metadata=RUNTIME)
    max_num_batched_tokens: int | None = field(default=None, metadata=RUNTIME)
    enforce_eager: bool = field(default=False, metadata=RUNTIME)
    distributed_executor_backend: str | None = field(default=None, metadata=RUNTIME)
    kv_cache_memory_bytes: int | None = field(default=None, metadata=RUNTIME)
    dtype: str = "auto"
    seed: int = 0
    # Any other vLLM EngineArgs field, checked against EngineArgs before the engine starts;
    # hashed except the names in RUNTIME_ENGINE_ARGS.
    extra: dict[str, Any] = field(default_factory=dict, metadata=OURS)
    # Environment for vLLM (VLLM_CPU_KVCACHE_SPACE, VLLM_CPU_OMP_THREADS_BIND, ...), set for
    # the engine's life.
    env: dict[str, str] = field(default_factory=dict, metadata=RUNTIME_OURS)
    # The runner's fault handling (runner/supervise.py, docs/faults.md).
    max_restarts: int = field(default=2, metadata=RUNTIME_OURS)  # restarts per invocation
    # No engine step returned for this long: the engine is treated as dead. null: off.
    stall_timeout_s: float | None = field(default=300.0, metadata=RUNTIME_OURS)
    # A vLLM OpenAI-compatible server instead of an engine in this process (docs/server.md):
    # http://HOST:PORT, or `serve` for the one `python -m runner.serve` runs on this store.
    url: str | None = field(default=None, metadata=RUNTIME_OURS)
    # Use a server whose engine arguments cannot be read (not started by runner.serve);
    # the manifest records it.
    trust_server: bool = field(default=False, metadata=RUNTIME_OURS)
    # A server request with no answer for this long is an item error (kind `timeout`).
    request_timeout_s: float | None = field(default=600.0, metadata=RUNTIME_OURS)
    # Requests queued in the engine at once; more are queued as outputs finish, so memory
    # stays flat and results are stored from the first one on. null: 2 x max_num_seqs (as
    # `vllm run-batch` bounds it).
    max_in_flight: int | None = field(default=None, metadata=RUNTIME_OURS)


# EngineArgs names under engine.extra that do not change results.
RUNTIME_ENGINE_ARGS = frozenset({
    "swap_space", "cpu_offload_gb", "block_size", "enable_prefix_caching", "disable_log_stats",
    "data_parallel_size", "max_parallel_loading_workers", "disable_custom_all_reduce",
    "enable_chunked_prefill", "max_num_partial_prefills", "scheduling_policy", "download_dir",
    "worker_cls", "mm_processor_cache_gb", "async_scheduling", "compilation_config",
    "kv_cache_dtype_skip_layers", "safetensors_load_strategy",
})


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
    # The error budget (runner/budget.py): a fraction of the items, null for none.
    max_error_rate: float | None = field(default=None, metadata=RUNTIME)


@dataclass
class StoreConfig:
    """Where and how results are stored; never hashed."""

    root: str = "outputs"
    wait: bool = True  # wait for another process writing the same run, else exit at once
    fsync_every: int = 16  # items per fsync of results.jsonl ...
    fsync_seconds: float = 2.0  # ... or this many seconds, whichever comes first
    thumbnails: bool = True  # the report's thumbnails, made in the background during a run


@dataclass
class ShardConfig:
    """Data-parallel shards of one run: job `index` of `count` takes the items whose key
    falls in its residue class; all shards fill one run folder. Never hashed."""

    index: int = 0
    count: int = 1


class LogTarget(str, Enum):
    file = "file"  # engine output into <run>/engine.log; the console shows the runner's display
    console = "console"  # engine output streams to the console, as vLLM prints it


@dataclass
class LogConfig:
    """Where the engine's output goes (runner/logs.py). Not part of the hash."""

    engine: LogTarget = LogTarget.file


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dry_run: bool = False  # plan and report what would run; never starts the engine
    # Retry the run's error records (runner/retry.py): true, or the kinds to retry
    # (runner/kinds.py), e.g. [engine_death,stall]. Not hashed (top level).
    retry_errors: Any = False


HASHED_GROUPS = {"model": ModelConfig, "engine": EngineConfig, "sampling": SamplingConfig,
                 "prompts": PromptsConfig}  # store, shard and dry_run never change results
ENGINE_GROUPS = {"model": ModelConfig, "engine": EngineConfig}


def _marked(cls: type, mark: str) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get(mark, True)]


def _container(cfg: DictConfig) -> dict[str, Any]:
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    return c


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved fields that change results (docs/runs.md, "The run hash")."""
    c = _container(cfg)
    out = {g: {k: c[g][k] for k in _marked(cls, "hash")} for g, cls in HASHED_GROUPS.items()}
    out["engine"]["extra"] = {k: v for k, v in out["engine"]["extra"].items()
                              if k not in RUNTIME_ENGINE_ARGS}
    out["sampling"] = checked_sampling(out["sampling"])  # empty structured_outputs left out
    return out


def sampling_of(cfg: DictConfig) -> dict[str, Any]:
    """The run's `sampling`, resolved and checked (runner/sampling.py: checked_sampling)."""
    return checked_sampling(_container(cfg.sampling))


def engine_args(cfg: DictConfig) -> dict[str, Any]:
    """The model and engine fields that are vLLM engine arguments, None (vLLM's default) left
    out; `model`, `allowed_local_media_path` and engine.extra are added by the engine."""
    c = _container(cfg)
    return {k: c[g][k] for g, cls in ENGINE_GROUPS.items() for k in _marked(cls, "vllm")
            if c[g][k] is not None}


def field_names(*groups: str) -> set[str]:
    return {f.name for g in groups for f in dataclasses.fields(HASHED_GROUPS[g])}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
