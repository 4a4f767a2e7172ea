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
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# Benchmark imports, by the key of what produced each, under store.root (runner/benchmarks/)
BENCHMARK_CACHE = ".cache/benchmarks"
# the presets of runner/benchmarks/harness.yaml (tests/test_benchmarks.py checks they agree)
BENCHMARK_NAMES = ("mmmu", "mathvista", "chartqa", "docvqa", "vqav2", "mm_mt_bench")

RUNTIME = {"hash": False}  # a runtime knob: does not change results
OURS = {"vllm": False}  # ours, not a vLLM engine argument (changes results)
RUNTIME_OURS = RUNTIME | OURS  # ours, and does not change results


@dataclass
class StructuredOutputsConfig:
    """vLLM's StructuredOutputsParams fields, typed: `sampling.structured_outputs.choice=[A,B]`
    needs no `+`, and a misspelled field fails at composition, naming it. Unset (null) fields
    are left out of the request and of the hash."""

    json: Any = None  # a JSON schema: a mapping, a JSON string or a path to a .json file
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None
    whitespace_pattern: str | None = None


@dataclass
class SamplingConfig:
    """vLLM SamplingParams; defaults are vLLM's own. Every field is hashed (structured_outputs
    when set, with a `json` schema file's content instead of its path)."""

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
    # vLLM's StructuredOutputsParams: one of json (a schema, inline or a .json file), regex,
    # choice, grammar, json_object, structural_tag; plus its options. All unset: unconstrained.
    structured_outputs: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)



@dataclass
class ApiConfig:
    """A hosted model behind an OpenAI-compatible API (docs/api.md): requests go to `url`
    naming `model`, with the key from the environment variable `key_env`. The run hash holds
    the model id and the provider, never the URL (it may carry secrets) nor the key. Unset
    `url`: not a hosted model, and nothing of this block is in the hash."""

    url: str | None = field(default=None, metadata=RUNTIME)  # https://HOST[/v1]
    model: str | None = None  # the id the requests name (e.g. gpt-4o-2024-08-06)
    provider: str | None = None  # who serves it (e.g. openai): another provider, another run
    # the environment variable holding the API key (sent as a Bearer token to `url` only);
    # the key itself is never in a config, a manifest, a log or the store
    key_env: str | None = field(default=None, metadata=RUNTIME)
    in_flight: int = field(default=8, metadata=RUNTIME)  # requests at once
    retries: int = field(default=5, metadata=RUNTIME)  # per request: 429/503, a lost connection
    # USD per million tokens: the manifest's estimated cost (null: none)
    price_prompt: float | None = field(default=None, metadata=RUNTIME)
    price_completion: float | None = field(default=None, metadata=RUNTIME)


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
    # The image processor's options (e.g. Qwen2-VL's min_pixels / max_pixels): they change the
    # image tokens, so results. null: the processor's defaults (and not in the run hash).
    mm_processor_kwargs: dict[str, Any] | None = None
    # What this model needs; engine.tensor_parallel_size defaults to it.
    tensor_parallel_size: int = field(default=1, metadata=RUNTIME_OURS)
    # A quantized model's base (its hf_repo or name): the card's recovery % pairs only these
    quantized_from: str | None = field(default=None, metadata=RUNTIME_OURS)
    # A hosted model (docs/api.md): set api.url and the requests go to that API, no engine
    api: ApiConfig = field(default_factory=ApiConfig, metadata=OURS)


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
    # The runner's fault handling (runner/job/supervise.py, docs/faults.md).
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
    # The server client's connections (one thread each), whatever max_num_seqs is.
    max_connections: int = field(default=64, metadata=RUNTIME_OURS)
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
    # Image handling (runner/plan/images.py). Not hashed: item keys cover the image bytes and the
    # conversion settings, so a changed max_image_size recomputes exactly the items it changes.
    allow_remote: bool = field(default=False, metadata=RUNTIME)  # fetch http(s) images
    max_image_pixels: int = field(default=89_478_485, metadata=RUNTIME)  # bomb guard
    max_image_size: int | None = field(default=None, metadata=RUNTIME)  # longest side cap
    on_item_error: str = field(default="skip", metadata=RUNTIME)  # skip | fail
    # The error budget (runner/job/budget.py): a fraction of the items, null for none.
    max_error_rate: float | None = field(default=None, metadata=RUNTIME)
    # A benchmark preset (conf/prompts/<bench>.yaml, runner/benchmarks/preset.py): imported on
    # first use from `source` (default: the harness's dataset id) into the store's cache.
    benchmark: str | None = field(default=None, metadata=RUNTIME)
    source: str | None = field(default=None, metadata=RUNTIME)
    # A seeded subset per benchmark (prompts.subset.vqav2=1000): that many rows of its split,
    # chosen by `subset_seed` (runner/benchmarks/sources.py seeded) and recorded in the
    # import; null: the whole split. Keyed by benchmark so one value serves a multirun.
    subset: dict[str, int | None] = field(
        default_factory=lambda: dict.fromkeys(BENCHMARK_NAMES), metadata=RUNTIME)
    subset_seed: int = field(default=0, metadata=RUNTIME)


@dataclass
class StoreConfig:
    """Where and how results are stored; never hashed."""

    root: str = "outputs"
    wait: bool = True  # wait for another process writing the same run, else exit at once
    fsync_every: int = 16  # items per fsync of results.jsonl ...
    fsync_seconds: float = 2.0  # ... or this many seconds, whichever comes first
    # the report's thumbnails, made by the run after its last result; off: the report makes
    # them (a process pool) on its first build, and the run's CPU and wall go to the engine
    thumbnails: bool = False


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
    """Where the engine's output goes (runner/console/logs.py). Not part of the hash."""

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
    # With dry_run: write the OpenAI batch input file of the requests (runner/plan/batchfile.py)
    dry_run_requests: str | None = None
    # Retry the run's error records (runner/job/retry.py): true, or the kinds to retry
    # (runner/kinds.py), e.g. [engine_death,stall]. Not hashed (top level).
    retry_errors: Any = False
    # `judge=mm_mt_bench judge.url=...`: the judge of `python -m runner.results judge`, run
    # after generation over the runs that are judged (runner/job/judging.py). Not hashed.
    judge: JudgeConfig | None = None


HASHED_GROUPS = {"model": ModelConfig, "engine": EngineConfig, "sampling": SamplingConfig,
                 "prompts": PromptsConfig}  # store, shard and dry_run never change results
ENGINE_GROUPS = {"model": ModelConfig, "engine": EngineConfig}


def marked(cls: type, mark: str) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get(mark, True)]


def container(cfg: DictConfig) -> dict[str, Any]:
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    return c


def engine_args(cfg: DictConfig) -> dict[str, Any]:
    """The model and engine fields that are vLLM engine arguments, None (vLLM's default) left
    out; `model`, `allowed_local_media_path` and engine.extra are added by the engine."""
    c = container(cfg)
    return {k: c[g][k] for g, cls in ENGINE_GROUPS.items() for k in marked(cls, "vllm")
            if c[g][k] is not None}


def field_names(*groups: str) -> set[str]:
    return {f.name for g in groups for f in dataclasses.fields(HASHED_GROUPS[g])}


@dataclass
class JudgeConfig:
    """An LLM judge (`python -m runner.results judge`, docs/judges.md): an OpenAI-compatible
    chat endpoint rating each stored output against its reference. Not part of a run: judged
    scores are read from stored runs. `hash: False` fields do not change the judgements, the
    others make the judge configuration's id (another id, another score set)."""

    name: str = MISSING  # a label for the score set (the id is the hash of the fields)
    # `serve`: `python -m runner.serve` on the run's store; or http(s)://HOST[:PORT][/v1]
    url: str = field(default="serve", metadata=RUNTIME)
    model: str | None = None  # the served model to ask; null: the server's only model
    # the environment variable holding the API key (sent as a Bearer token); the key itself
    # is never in a config, a manifest, a log or the store
    api_key_env: str | None = field(default=None, metadata=RUNTIME)
    system: str = ""  # the system prompt, verbatim
    # the conversation replayed: `start`, then per user turn `user` + its parts (images in
    # place) + `reference`, then `answer`, then `end` ({reference}, {answer} substituted)
    start: str = ""
    user: str = ""
    reference: str = ""
    answer: str = ""
    end: str = ""
    rating_pattern: str = r"\[\[(\d+\.?\d*)\]\]"  # group 1 is the rating (re.search)
    scale: list[float] = field(default_factory=lambda: [1.0, 10.0])  # outside it: no rating
    max_tokens: int = 2048
    temperature: float = 0.0
    extra_body: dict[str, Any] = field(default_factory=dict)  # e.g. structured_outputs
    reasks: int = 2  # asks again this many times when no rating parses; then unrated
    in_flight: int = field(default=8, metadata=RUNTIME)
    timeout_s: float = field(default=300.0, metadata=RUNTIME)
    retries: int = field(default=3, metadata=RUNTIME)  # per request: errors, 429, refusals
    backoff_s: float = field(default=1.0, metadata=RUNTIME)  # doubled at each retry


@dataclass
class JudgingConfig:
    judge: JudgeConfig = field(default_factory=JudgeConfig)


def shipped(name: str) -> Path:
    """`conf` or `prompts` as the runner ships them: inside the package in an installed wheel
    (setup.py copies them there), else the checkout's top-level folder."""
    here = Path(__file__).resolve().parent
    inside = here / "_shipped" / name
    return inside if inside.is_dir() else here.parent / name


CONF = str(shipped("conf"))


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="judging_schema", node=JudgingConfig)
