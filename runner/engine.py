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
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import engine_args, field_names
from runner.errors import EngineDied, StartFailed, UserError

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
    """One sentence for a failed `LLM(...)`."""
    d = root_cause(e, log)
    for pattern, msg in _START_FAILURES:
        if re.search(pattern, d, re.IGNORECASE):
            return msg.format(d=d, path=path)
    if isinstance(e, (ValueError, TypeError)):  # vLLM's config checks, in this process
        return (f"vLLM rejected the engine arguments ({d}): fix the engine.* or model.* key "
                "it names.")
    return f"The vLLM engine failed to start ({d}); the engine's log has the details."


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
        self.args: tuple[dict[str, Any], Mapping[str, Any]] = ({}, {})

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
        self.args = (kw, env)
        self._scope.enter_context(environ(env))
        t = time.perf_counter()
        try:
            self.llm = self.start(kw)
        except UserError:
            self._scope.close()
            raise
        except Exception as e:  # noqa: BLE001 - vLLM fails in many ways; say which, once
            self._scope.close()
            raise StartFailed(explain_start_failure(e, self.log_text(), kw["model"])) from e
        except BaseException:
            self._scope.close()
            raise
        if not self.starts:  # runs before multiprocessing's exit hook, which kills the core
            atexit.register(self.shutdown)
        self.key, self.starts = key, self.starts + 1
        return self.llm, time.perf_counter() - t, False

    @staticmethod
    def log_text() -> str:
        """The end of the engine's log so far: the root cause of a failed start is there
        (its engine core and workers are other processes)."""
        from runner.logs import current, tail

        log = current()
        return "\n".join(tail(log.path, 400)) if log is not None and log.capture else ""

    def restart(self) -> tuple[Any, float, bool]:
        """A new engine with the last arguments, after shutting down (and freeing) the old."""
        self.shutdown()
        return self.get(*self.args)

    def window(self) -> int:
        """How many requests the engine runs at once (vLLM's max_num_seqs, resolved)."""
        return int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)

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


def make_params(sampling: dict[str, Any]) -> Any:
    """vLLM SamplingParams from an effective sampling mapping (runner/sampling.py)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    kw = dict(sampling)
    so = kw.pop("structured_outputs", None)
    if so:
        kw["structured_outputs"] = StructuredOutputsParams(**so)
    return SamplingParams(**kw)


def sampling_params(cfg: DictConfig) -> Any:
    """The run's SamplingParams (its `sampling` config, a `json` schema file read)."""
    from runner.config import run_sampling_of

    return make_params(run_sampling_of(cfg))


class Watchdog:
    """Wakes a blocked `step()` when the engine core dies or stalls.

    vLLM notices a dead engine core process ("engine core exited unexpectedly") but leaves
    `LLMEngine.step()` waiting on its output queue forever. This thread checks the engine core
    processes, vLLM's own dead flag, and the time since the last step returned; on a death or a
    stall (after killing the stalled process) it puts an error on that queue, so `step()`
    raises.
    """

    def __init__(self, llm: Any, stall_timeout_s: float | None, poll_s: float = 0.2):
        self.core = llm.llm_engine.engine_core
        self.resources = getattr(self.core, "resources", None)
        manager = getattr(self.resources, "engine_manager", None)
        self.procs = list(getattr(manager, "processes", []) or [])
        self.queue = getattr(self.core, "outputs_queue", None)  # None: engine in this process
        self.stall_timeout_s = stall_timeout_s or None
        self.poll_s = poll_s
        self.reason: str | None = None
        self.last: float | None = None  # stalls count from the first step on, not while queueing
        self.max_gap_s = 0.0  # the longest wait for a step (measured; see README)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="runner-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        if self.queue is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def beat(self) -> None:
        t = time.monotonic()
        if self.last is not None:
            self.max_gap_s = max(self.max_gap_s, t - self.last)
        self.last = t

    def check(self) -> str | None:
        for p in self.procs:
            if p.exitcode is not None:
                return f"the engine core process ({p.name}, pid {p.pid}) {_exit_text(p.exitcode)}"
        if getattr(self.resources, "engine_dead", False):
            return "vLLM reported the engine core dead"
        idle = time.monotonic() - self.last if self.last is not None else 0.0
        if self.stall_timeout_s and idle > self.stall_timeout_s:
            for p in self.procs:  # a hung engine would hold its memory: make it a dead one
                p.kill()
            return f"no progress for {idle:.0f} s (engine.stall_timeout_s={self.stall_timeout_s:g})"
        return None

    def explain(self, e: BaseException) -> str:
        """Why step() or enqueue failed: our own finding, else a dead process's exit (vLLM's
        EngineDeadError names none), else the error itself."""
        if self.reason:
            return self.reason
        for p in self.procs:
            p.join(timeout=2.0)  # vLLM may raise before the process is reaped
        return self.check() or f"{type(e).__name__}: {e}"

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            reason = self.check()
            if reason:
                self.reason = reason
                self.queue.put_nowait(RuntimeError(reason))  # type: ignore[union-attr]
                return


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def generate(llm: Any, requests: Iterable[tuple[str, list[dict], Any]],
             on_output: Callable[[str, Any], None], on_error: Callable[[str, str], None],
             stall_timeout_s: float | None = None,
             on_step: Callable[[], None] | None = None) -> float:
    """Queue every request (key, messages, its SamplingParams), then step the engine, handing
    each finished output over at once (`on_step` runs after every engine step: the progress
    display).

    Requests are queued one by one so a bad one (e.g. an unreadable image) becomes an item
    error instead of failing the batch; vLLM's scheduler sees them all as one batch.
    If the engine dies or stalls, raises EngineDied with the keys not finished, in queue order.
    Returns the longest wait for a step (s), which sizes engine.stall_timeout_s.
    """
    from vllm.v1.engine.exceptions import EngineDeadError

    reqs = list(requests)
    ids: dict[str, str] = {}  # vLLM request id -> key, in queue order
    with Watchdog(llm, stall_timeout_s) as dog:
        for n, (key, messages, sp) in enumerate(reqs):
            try:
                (rid,) = llm.enqueue_chat([messages], sp, use_tqdm=False)
            except EngineDeadError as e:
                raise EngineDied(dog.explain(e), [*ids.values(), *(r[0] for r in reqs[n:])]) \
                    from None
            except Exception as e:  # noqa: BLE001 - vLLM raises many kinds for bad input
                if dog.reason:
                    raise EngineDied(dog.reason, [*ids.values(), *(r[0] for r in reqs[n:])]) \
                        from None
                on_error(key, f"{type(e).__name__}: {e}")
                continue
            # enqueue_chat returns vLLM's internal id ("<n>-<random>"); outputs carry the
            # external one ("<n>").
            ids[rid.partition("-")[0]] = key
        engine = llm.llm_engine
        dog.beat()
        while engine.has_unfinished_requests():
            try:
                outs = engine.step()
            except Exception as e:  # noqa: BLE001 - EngineDeadError, or our watchdog's wake-up
                raise EngineDied(dog.explain(e), list(ids.values())) from None
            dog.beat()
            if on_step is not None:
                on_step()
            for out in outs:
                if out.finished:
                    on_output(ids.pop(out.request_id), out)
    return dog.max_gap_s
