"""The real engine: vLLM's offline `LLM`, fed one request at a time, stepped by the runner.

vLLM is imported only when an engine starts (here; args.py checks engine arguments against
EngineArgs at the start, probe.py reads the loaded layers, server.py starts vLLM's server).
Every vLLM internal read in this package is named in contract.py, whose test fails when one
moves.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from runner.console.logs import loggers_to_pump, watch_phases
from runner.engine import reap
from runner.engine.api import Event, Finished, Refused, Sample, Stepped, Tokens
from runner.engine.args import check_engine_args
from runner.engine.tokenizer import shared_mistral_tokenizer
from runner.engine.watchdog import Watchdog
from runner.errors import EngineDied, UserError

# Seconds the engine core may take to tear down its workers after SIGTERM. vLLM's default
# (5 s) is shorter than a loaded CPU needs: past it vLLM force-kills the core mid-teardown.
SHUTDOWN_TIMEOUT = 120.0
TOKENS_EVERY_S = 0.5  # how often the progress counters are read (a metrics snapshot each)
PROBE = "runner.engine.probe.QuantProbe"
IPC_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1: the longest ZeroMQ ipc socket path

# What vLLM's log says the engine is doing, shown beside the start spinner (runner/console/logs.py).
START_PHASES = [(re.compile(p), name) for p, name in (
    (r"non-default args|Resolved architecture", "reading the model config"),
    (r"Initializing a V1 LLM engine", "starting the engine core"),
    (r"Starting to load model|Loading safetensors", "loading weights"),
    (r"KV cache size|KV cache layout", "allocating the KV cache"),
    (r"init engine \(profile", "warming up"),
)]


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise UserError(f"vLLM is not installed in this Python ({e}); run `make install` "
                        "(CPU) or `pip install -e '.[gpu]'` (CUDA).") from None
    check_version(str(getattr(vllm, "__version__", "unknown")))
    return vllm


def check_version(version: str) -> None:
    """The in-process engine reaches into vLLM's internals (runner/engine/contract.py), checked
    on one minor only: another build (a vendor's, ROCm's, an older or newer release) is refused
    before it fails in ways no page explains, with the way that works instead."""
    from runner.engine.contract import TESTED_MINOR

    m = re.match(r"(\d+)\.(\d+)", version)
    if m and (int(m[1]), int(m[2])) == TESTED_MINOR:
        return
    tested = ".".join(map(str, TESTED_MINOR))
    raise UserError(
        f"vLLM {version} is installed, but the runner's in-process engine works with vLLM "
        f"{tested} only; with this build, start its own server (`vllm serve MODEL_PATH "
        "--max-model-len N ...`) and run with `engine=server engine.url=http://HOST:PORT "
        "engine.trust_server=true` (docs/gpu.md), or install vLLM "
        f"{tested} (`pip install -e '.[gpu]'`).")


def make_params(sampling: dict[str, Any]) -> Any:
    """vLLM SamplingParams from an effective sampling mapping (runner/plan/sampling.py)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    kw = dict(sampling)
    so = kw.pop("structured_outputs", None)
    if so:
        kw["structured_outputs"] = StructuredOutputsParams(**so)
    return SamplingParams(**kw)


def count_start() -> None:
    """The test suite counts real engine starts (its last line) from this file."""
    if path := os.environ.get("RUNNER_ENGINE_STARTS_LOG"):
        with open(path, "a") as f:
            test = os.environ.get("PYTEST_CURRENT_TEST", "")  # which test started it
            f.write(f"{os.getpid()} {time.time():.0f} {test}\n")


class VllmEngine:
    kind = "vllm"
    steps = True

    def __init__(self, kw: dict[str, Any]):
        vllm = import_vllm()
        loggers_to_pump("vllm")  # its background threads may log after a stopped start
        check_engine_args(kw)
        count_start()
        watch_phases(START_PHASES)
        reap.quiet_resource_tracker()
        # vLLM's ZeroMQ sockets (files) go to a folder of this engine's, removed when it
        # stops: vLLM leaves them in the temp folder even after a graceful shutdown.
        self._rpc_was = os.environ.get("VLLM_RPC_BASE_PATH")
        base = self._rpc_was or tempfile.gettempdir()
        self._rpc: str | None = None
        # a socket path is at most 107 bytes (sun_path): vLLM's is <base>/<uuid4>; ours adds
        # "/rv" and 8 characters, only where that still fits (else vLLM's own place)
        if len(base.encode()) + 1 + 10 + 1 + 36 <= IPC_PATH_MAX:
            self._rpc = tempfile.mkdtemp(prefix="rv", dir=base)
            os.environ["VLLM_RPC_BASE_PATH"] = self._rpc
        try:
            # The probe lets describe() name the linear kernel in use. Stats stay at LLM's
            # default (off): they cost CPU every step; engine.extra.disable_log_stats=false
            # turns on the live token counters.
            # Its Mistral tokenizer: the token plan's, not a second build (tokenizer.py).
            with shared_mistral_tokenizer():
                self.llm = vllm.LLM(**({"worker_extension_cls": PROBE} | kw))
        except BaseException:
            self._remove_rpc()
            raise
        self.engine = self.llm.llm_engine
        self.max_num_seqs = int(self.engine.vllm_config.scheduler_config.max_num_seqs)
        self.dog = Watchdog(self.engine.engine_core)
        self.watchdog = "on" if self.dog.off is None else f"off: {self.dog.off}"
        self._ids: dict[str, str] = {}  # vLLM's external request id -> key, in submit order
        self._unsent: list[str] = []  # submitted to a dead engine: unfinished at its death
        self._params: dict[str, Any] = {}  # SamplingParams by sampling (JSON)
        from runner.engine.probe import temp_files

        self._temp = temp_files(self.llm, PROBE)  # what drop() removes for the workers

    @property
    def max_gap_s(self) -> float:
        return self.dog.max_gap_s

    def in_flight(self) -> int:
        return len(self._ids) + len(self._unsent)

    def _died(self, e: BaseException, also: tuple[str, ...] = ()) -> EngineDied:
        return EngineDied(self.dog.explain(e), [*self._ids.values(), *self._unsent, *also])

    def submit(self, key: str, messages: list[dict[str, Any]],
               sampling: dict[str, Any]) -> None:
        from vllm.v1.engine.exceptions import EngineDeadError

        k = json.dumps(sampling, sort_keys=True)
        try:
            if k not in self._params:
                self._params[k] = make_params(sampling)
        except Exception as e:  # noqa: BLE001 - vLLM refuses this item's sampling
            raise Refused(f"sampling: {type(e).__name__}: {e}", "sampling") from None
        try:
            (rid,) = self.llm.enqueue_chat([messages], self._params[k], use_tqdm=False)
        except EngineDeadError:  # events() hands out what finished first, then the death
            self._unsent.append(key)
            return
        except Exception as e:  # noqa: BLE001 - vLLM raises many kinds for bad input
            if self.why_dead():  # a core that just died, before the watchdog noticed: a death
                raise self._died(e, (key,)) from None
            raise Refused(f"{type(e).__name__}: {e}") from None
        # enqueue_chat returns vLLM's internal id ("<n>-<random>"); outputs carry "<n>".
        self._ids[rid.partition("-")[0]] = key

    def events(self, stall_timeout_s: float | None = None) -> Iterator[Event]:
        self.dog.stall_timeout_s = stall_timeout_s or None
        last = base = self._counts()
        polled = time.monotonic()
        self.dog.stepping(True)
        try:
            while self.engine.has_unfinished_requests() or self._unsent:
                if not self.engine.has_unfinished_requests():
                    raise self._died(RuntimeError("the engine core is dead"))
                try:
                    outs = self.engine.step()
                except Exception as e:  # noqa: BLE001 - EngineDeadError, or our watchdog's
                    raise self._died(e) from None
                self.dog.stepping(True)
                done = [out for out in outs if out.finished]
                for out in done or [None]:
                    self.dog.pause()  # the consumer's work is not the engine's time
                    yield Stepped() if out is None else \
                        Finished(self._ids.pop(out.request_id), len(out.prompt_token_ids or []),
                                 [Sample(c.text, c.finish_reason, len(c.token_ids))
                                  for c in out.outputs])
                    self.dog.resume()
                if base is not None and time.monotonic() - polled >= TOKENS_EVERY_S:
                    polled, c = time.monotonic(), self._counts()
                    if c is not None and last is not None:
                        self.dog.pause()
                        yield Tokens(c[0] - last[0], c[1] - last[1])
                        self.dog.resume()
                        last = c
        finally:
            self.dog.stepping(False)

    def _counts(self) -> tuple[int, int] | None:
        """(prompt, generated) tokens from vLLM's metrics; None when stats are off (LLM's
        default; engine.extra.disable_log_stats=false turns them on)."""
        try:
            ms = self.llm.get_metrics()
        except (AssertionError, AttributeError):
            return None
        total = {"vllm:prompt_tokens": 0.0, "vllm:generation_tokens": 0.0}
        for m in ms:
            if m.name in total:
                total[m.name] += getattr(m, "value", 0.0)
        return int(total["vllm:prompt_tokens"]), int(total["vllm:generation_tokens"])

    def why_dead(self) -> str | None:
        return self.dog.reason or self.dog.check()

    def kill(self) -> None:
        self.dog.kill()

    def describe(self) -> dict[str, Any]:
        from runner.engine.probe import describe

        return describe(self.llm, PROBE)

    def shutdown(self) -> None:
        """Stop the engine the way vLLM's client expects: the client detaches its finalizer
        (so its monitor thread does not report the core's exit as unexpected), sends SIGTERM,
        and waits for the core to tear down its workers and unlink its shared memory."""
        self.dog.stop()
        self.engine.engine_core.shutdown(timeout=SHUTDOWN_TIMEOUT)
        self._remove_rpc()
        self.llm = self.engine = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def drop(self) -> None:
        """Stop at once, for the end of the command (nothing in flight, this process exits
        next): the engine core and its workers are killed and reaped; what they would remove
        on a graceful exit is removed here (torch.distributed's file store, vLLM's sockets)
        or by multiprocessing's resource tracker, where they registered it (their shared
        memory and semaphores; EngineSlot.end stops the tracker). An engine whose processes
        or files are not known (the watchdog off, no probe) shuts down gracefully instead."""
        cores = list(self.dog.procs)
        if self.in_flight() or self._temp is None or not cores:
            self.shutdown()
            return
        self.dog.stop()
        # The cores' death is expected: vLLM's monitor threads stay quiet (the client's on
        # engine_dead, the process manager's without its finalizer).
        core = self.engine.engine_core
        core.resources.engine_dead = True
        core.resources.engine_manager._finalizer.detach()  # noqa: SLF001
        workers = reap.descendants(p.pid for p in cores)
        with reap.subreaper():  # a killed core's workers become this process's to reap
            reap.kill([*workers, *(p.pid for p in cores)])
            for p in cores:
                p.join(reap.REAP_TIMEOUT_S)
            reap.reap(workers)
        for f in self._temp:
            with contextlib.suppress(OSError):
                os.unlink(f)
        self._remove_rpc()
        self.llm = self.engine = None

    def _remove_rpc(self) -> None:
        if self._rpc is None:
            return
        shutil.rmtree(self._rpc, ignore_errors=True)
        if self._rpc_was is None:
            os.environ.pop("VLLM_RPC_BASE_PATH", None)
        else:
            os.environ["VLLM_RPC_BASE_PATH"] = self._rpc_was
        self._rpc = None
