"""Stage 3, engine: one vLLM engine, fed all requests at once, results streamed as they finish.

vLLM and torch are imported here only, and only when an engine is needed: `--help`,
`--cfg job`, dry runs and cache hits never pay for them. Within one process (a Hydra
multirun) the engine is reused while its arguments are unchanged; `engine.env` is set in
os.environ for the engine's life and restored when it shuts down.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import engine_args, field_names
from runner.errors import UserError

# Seconds the engine core may take to tear down its workers after SIGTERM. vLLM's default
# (5 s) is shorter than a loaded CPU needs: past it vLLM force-kills the core mid-teardown.
SHUTDOWN_TIMEOUT = 120.0


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


def check_engine_args(kw: dict[str, Any]) -> None:
    """Every key must be a vLLM EngineArgs field: a typo is one error, before anything loads."""
    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    bad = sorted(set(kw) - known)
    if bad:
        import difflib

        hints = [f"{b} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(b, known, 1))
                 else b for b in bad]
        raise UserError(f"Not a vLLM engine argument: {', '.join(hints)}; "
                        "fix the key under engine.extra.")


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


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise UserError(f"vLLM is not installed in this Python ({e}); run `make install` "
                        "(CPU) or `pip install -e '.[gpu]'` (CUDA).") from None
    return vllm


def start_vllm(kw: dict[str, Any]) -> Any:
    """A new vLLM engine (os.environ already holds engine.env)."""
    vllm = import_vllm()
    check_engine_args(kw)
    # A worker extension that lets runner.quant.describe name the linear kernel in use.
    # Stats on (vLLM's default off for LLM): token counters for the progress display.
    return vllm.LLM(**({"worker_extension_cls": "runner.quant.QuantProbe",
                        "disable_log_stats": False} | kw))


class EngineCache:
    """At most one live engine per process, reused while its arguments and environment are
    equal. Its environment is set for its life: shutting it down restores os.environ."""

    def __init__(self, start: Callable[[dict[str, Any]], Any] = start_vllm) -> None:
        self.start = start
        self.key: str | None = None
        self.llm: Any = None
        self.starts = 0  # engines started in this process (the manifest records it)
        self._scope = ExitStack()  # engine.env of the live engine

    @staticmethod
    def _key(kw: dict[str, Any], env: Mapping[str, Any]) -> str:
        return repr(sorted(kw.items())) + repr(sorted(env.items()))

    def has(self, kw: dict[str, Any], env: Mapping[str, Any]) -> bool:
        """A live engine for these arguments: `get` will reuse it."""
        return self.llm is not None and self._key(kw, env) == self.key

    def get(self, kw: dict[str, Any], env: Mapping[str, Any]) -> tuple[Any, float, bool]:
        """(engine, seconds it took to start, whether it was reused)."""
        key = self._key(kw, env)
        if self.has(kw, env):
            return self.llm, 0.0, True
        self.shutdown()
        self._scope.enter_context(environ(env))
        t = time.perf_counter()
        try:
            self.llm = self.start(kw)
        except BaseException:
            self._scope.close()
            raise
        if not self.starts:  # runs before multiprocessing's exit hook, which kills the core
            atexit.register(self.shutdown)
        self.key, self.starts = key, self.starts + 1
        return self.llm, time.perf_counter() - t, False

    def shutdown(self) -> None:
        """Stop the engine the way vLLM's client expects: the client detaches its finalizer
        (so its monitor thread does not report the core's exit as unexpected), sends SIGTERM,
        and waits for the core to tear down its workers and unlink its shared memory."""
        if self.llm is None:
            return
        from runner.logs import redirected

        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            with redirected():  # vLLM's shutdown lines go to the engine log too
                core.shutdown(timeout=SHUTDOWN_TIMEOUT)
        self.llm, self.key = None, None
        self._scope.close()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


ENGINES = EngineCache()


def token_counts(llm: Any) -> tuple[int, int] | None:
    """(prompt, generated) tokens this process's engines have processed so far, from vLLM's
    metrics; None when stats are off (engine.extra.disable_log_stats=true)."""
    try:
        ms = llm.get_metrics()
    except (AssertionError, AttributeError):
        return None
    total = {"vllm:prompt_tokens": 0.0, "vllm:generation_tokens": 0.0}
    for m in ms:
        if m.name in total:
            total[m.name] += getattr(m, "value", 0.0)
    return int(total["vllm:prompt_tokens"]), int(total["vllm:generation_tokens"])


def sampling_params(cfg: DictConfig) -> Any:
    from vllm import SamplingParams

    return SamplingParams(**OmegaConf.to_container(cfg.sampling, resolve=True))  # type: ignore[arg-type]


def generate(llm: Any, requests: Iterable[tuple[str, list[dict]]], sp: Any,
             on_output: Callable[[str, Any], None],
             on_error: Callable[[str, str], None],
             on_step: Callable[[], None] | None = None) -> None:
    """Queue every request, then step the engine, handing each finished output over at once
    (`on_step` runs after every engine step: the progress display).

    Requests are queued one by one so a bad one (e.g. an unreadable image) becomes an item
    error instead of failing the batch; vLLM's scheduler sees them all as one batch.
    """
    ids: dict[str, str] = {}
    for key, messages in requests:
        try:
            (rid,) = llm.enqueue_chat([messages], sp, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - vLLM raises many kinds for bad input
            on_error(key, f"{type(e).__name__}: {e}")
            continue
        # enqueue_chat returns vLLM's internal id ("<n>-<random>"); outputs carry the
        # external one ("<n>").
        ids[rid.partition("-")[0]] = key
    engine = llm.llm_engine
    while engine.has_unfinished_requests():
        outs = engine.step()
        if on_step is not None:
            on_step()
        for out in outs:
            if out.finished:
                on_output(ids[out.request_id], out)
