"""vLLM engine arguments from a config, checked against vLLM's own EngineArgs, and what a
failed engine start means, as one sentence."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import BENCHMARK_CACHE, engine_args, field_names
from runner.errors import UserError


def engine_kwargs(cfg: DictConfig, media_root: Path) -> dict[str, Any]:
    """vLLM `LLM(...)` keyword arguments for this config, with vLLM's names."""
    kw: dict[str, Any] = {"model": str(Path(cfg.model.path).resolve())}
    kw |= engine_args(cfg) | {"allowed_local_media_path": str(media_root)}
    extra = OmegaConf.to_container(cfg.engine.extra, resolve=True)
    assert isinstance(extra, dict)
    typed = field_names("model", "engine") - {"extra", "env"}
    clash = set(extra) & (typed | {"model", "allowed_local_media_path"})
    if clash:
        raise UserError(f"engine.extra sets {', '.join(sorted(clash))}, which have their own "
                        "keys; set those directly (e.g. engine.max_num_seqs=...).")
    return kw | extra


def media_root(cfg: DictConfig, set_root: Path) -> Path:
    """Where vLLM may read local images (its allowed_local_media_path): prompts.root when
    the set lies under it, so a sweep over the sets there keeps one engine (for benchmark
    imports, each in its own folder, the folder of them all); else the set's own root. The
    plan already refused images outside the set's root."""
    from runner.plan.load import shipped_root

    root = shipped_root(cfg.prompts.root) or Path(cfg.prompts.root).resolve()
    imports = (Path(cfg.store.root) / BENCHMARK_CACHE).resolve()
    if root.is_relative_to(imports):
        root = imports
    return root if set_root.resolve().is_relative_to(root) else set_root


def served(cfg: DictConfig) -> bool:
    """Requests go to a server (engine.url) or a hosted model's API (model.api.url)."""
    return bool(cfg.engine.url or (cfg.model.get("api") or {}).get("url"))


def engine_spec(cfg: DictConfig, set_root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """What identifies this config's engine: its arguments and its `engine.env`."""
    kw = engine_kwargs(cfg, media_root(cfg, set_root))
    if served(cfg):  # a vLLM server or an API instead of an engine (runner/engine/client.py)
        from runner.engine.connect import SPEC, spec_of

        return kw | {SPEC: spec_of(cfg)}, {}
    env = OmegaConf.to_container(cfg.engine.env, resolve=True)
    assert isinstance(env, dict)
    return kw, env


NAMES = Path(__file__).with_name("engine_args.txt")  # vLLM's EngineArgs fields, one a line


def vllm_engine_arg_names() -> set[str]:
    """The installed vLLM's EngineArgs fields (imports vLLM: the contract test and --write)."""
    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def engine_arg_names() -> set[str]:
    """vLLM's EngineArgs fields from the list kept in the repo: no vLLM import, so a dry run
    checks engine.extra before any download or install of vLLM."""
    lines = NAMES.read_text().splitlines()
    return {ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")}


def check_engine_args(kw: dict[str, Any]) -> None:
    """Every key must be a vLLM EngineArgs field: a typo is one error, before anything loads."""
    known = engine_arg_names()
    bad = sorted(set(kw) - known)
    if bad:
        hints = [f"{b} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(b, known, 1))
                 else b for b in bad]
        raise UserError(f"Not a vLLM engine argument: {', '.join(hints)}; "
                        "fix the key under engine.extra.")


def write_names() -> None:
    """Rewrite engine_args.txt from the installed vLLM (after a vLLM upgrade)."""
    import vllm

    head = (f"# vLLM {vllm.__version__} EngineArgs fields, one a line: engine.extra is checked "
            "against these without importing vLLM.\n# tests/test_engine_contract.py keeps this "
            "list equal to the installed vLLM (regenerate: python -m runner.engine.args).\n")
    NAMES.write_text(head + "\n".join(sorted(vllm_engine_arg_names())) + "\n")


@contextmanager
def environ(env: Mapping[str, Any]) -> Iterator[None]:
    """`env` set in os.environ for the block; every name restored (or removed) after it."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# What a failed engine start means, from vLLM's root-cause line (often in a child process's
# log). First match wins; {d} is that line.
_START_FAILURES = [
    (r"kv[ _]?cache|memory for kv|--kv-cache-memory|memory for the cache blocks",
     "Not enough memory for the KV cache ({d}): lower engine.kv_cache_memory_bytes (CPU) or "
     "engine.gpu_memory_utilization or model.max_model_len, or free memory."),
    (r"safetensor|deserializ|load_weights|weights? (?:file|not found)|checkpoint|params\.json",
     "The weights in {path} did not load ({d}): check that the folder is complete (download it "
     "again) and that model.load_format and model.config_format match it."),
    (r"address already in use|eaddrinuse",
     "A port the engine needs is in use ({d}): stop what holds it, or set engine.env.VLLM_PORT "
     "to a free one."),
    (r"cuda error|no cuda gpus|invalid device ordinal|device.*(?:busy|unavailable)",
     "A device the engine needs is unavailable ({d}): check CUDA_VISIBLE_DEVICES, "
     "engine.tensor_parallel_size and what else runs on the GPUs."),
]
_WRAPPERS = ("initialization failed", "failed to start", "see root cause", "see stack trace")


def root_cause(e: BaseException, log: str = "") -> str:
    """The exception's own message, unless it is vLLM's "see the root cause above"; then the
    last `SomeError: message` line of the log (the engine core's or a worker's)."""
    own = f"{type(e).__name__}: {' '.join(str(e).split())}"
    found = [own] if not any(w in own.lower() for w in _WRAPPERS) else [
        m.group(1) for x in log.splitlines()
        if (m := re.search(r"(\b[\w.]*(?:Error|Exception)\b: .+)$", x))
        and not any(w in x.lower() for w in _WRAPPERS)]
    d = found[-1] if found else own
    return re.sub(r"[,;.]?\s*please check the stack trace.*$", "", d, flags=re.I)[:300]


def explain_start_failure(e: BaseException, log: str, path: str) -> str:
    """One sentence for a failed engine start."""
    d = root_cause(e, log)
    for pattern, msg in _START_FAILURES:
        if re.search(pattern, d, re.IGNORECASE):
            return msg.format(d=d, path=path)
    if isinstance(e, (ValueError, TypeError)):  # vLLM's config checks, in this process
        return (f"vLLM rejected the engine arguments ({d}): fix the engine.* or model.* key "
                "it names.")
    return f"The vLLM engine failed to start ({d}); the engine's log has the details."


if __name__ == "__main__":
    write_names()
