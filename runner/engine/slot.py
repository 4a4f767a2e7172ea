"""At most one live engine per process, reused while its arguments and environment are equal
(a Hydra multirun's points share it). `engine.env` is set in os.environ for the engine's
life and restored when it shuts down."""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

from runner.engine.api import Engine
from runner.engine.args import environ, explain_start_failure
from runner.errors import StartFailed, UserError

T = TypeVar("T")
W = TypeVar("W")


def start_engine(kw: dict[str, Any]) -> Engine:
    """The real vLLM engine; a client of a vLLM server when the job asks for one (engine.url);
    the fake one when RUNNER_ENGINE=fake (tests only)."""
    from runner.engine.connect import SPEC

    if SPEC in kw:
        from runner.engine.client import ServerEngine

        return ServerEngine(kw)
    if os.environ.get("RUNNER_ENGINE") == "fake":
        from runner.engine.fake import FakeEngine

        return FakeEngine(kw)
    from runner.engine.vllm_engine import VllmEngine

    return VllmEngine(kw)


class EngineSlot:
    def __init__(self, start: Callable[[dict[str, Any]], Engine] = start_engine) -> None:
        self.start = start
        self.key: str | None = None
        self.engine: Engine | None = None
        self.starts = 0  # engines started in this process (the manifest records it)
        self._scope = ExitStack()  # engine.env of the live engine
        self.args: tuple[dict[str, Any], Mapping[str, Any]] = ({}, {})

    @staticmethod
    def _key(kw: dict[str, Any], env: Mapping[str, Any]) -> str:
        return repr(sorted(kw.items())) + repr(sorted(env.items()))

    def has(self, kw: dict[str, Any], env: Mapping[str, Any]) -> bool:
        """A live engine for these arguments: `get` will reuse it (not a server client whose
        server stopped answering: it connects again)."""
        return self.engine is not None and self._key(kw, env) == self.key and not (
            getattr(self.engine, "kind", None) == "server" and self.engine.why_dead())

    def get(self, kw: dict[str, Any], env: Mapping[str, Any]) -> tuple[Engine, float, bool]:
        """(engine, seconds it took to start, whether it was reused)."""
        if self.engine is not None and self.has(kw, env):
            return self.engine, 0.0, True
        self.shutdown()
        self.args = (kw, env)
        self._scope.enter_context(environ(env))
        t = time.perf_counter()
        try:
            self.engine = self.start(kw)
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
        self.key, self.starts = self._key(kw, env), self.starts + 1
        return self.engine, time.perf_counter() - t, False

    @staticmethod
    def log_text() -> str:
        """The end of the engine's log so far: the root cause of a failed start is there
        (its engine core and workers are other processes). The pump is drained first: the
        engine's last lines may still be in its pipe (a failed start read too early)."""
        from runner.console.logs import current, drain, tail

        drain()
        log = current()
        return "\n".join(tail(log.path, 400)) if log is not None and log.capture else ""

    @staticmethod
    def abort_start(started: threading.Event, spare: set[int]) -> None:
        """Stop an engine start running in another thread at once: kill the child processes
        of this process that the start made (vLLM's engine core, or the fake engine) as they
        appear, until that start has returned (with an error, for it lost its engine). Spared:
        the children that were there before it (`spare`: an earlier engine core still shutting
        down) and multiprocessing's resource tracker, which outlives every start."""
        while not started.is_set():
            for pid in children() - spare:
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"resource_tracker" not in cmd:
                        os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            started.wait(0.1)

    def beside(self, start: Callable[[], T], work: Callable[[], W]) -> tuple[T, W]:
        """`work()` (the plan) in a thread while `start()` (an engine start) runs here. An
        error in the work stops the start at once (its processes killed) or shuts down what
        started, and is raised as itself."""
        box: dict[str, Any] = {}
        started, spare = threading.Event(), children()

        def run() -> None:
            try:
                box["out"] = work()
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                box["error"] = e
                self.abort_start(started, spare)

        t = threading.Thread(target=run, name="runner-plan", daemon=True)
        t.start()
        try:
            out = start()
        except Exception:
            started.set()
            t.join()
            if "error" in box:
                raise box["error"] from None
            raise
        started.set()
        t.join()
        if "error" in box:
            self.shutdown()
            raise box["error"]
        return out, box["out"]

    def restart(self) -> tuple[Engine, float, bool]:
        """A new engine with the last arguments, after shutting down (and freeing) the old."""
        self.shutdown()
        return self.get(*self.args)

    def shutdown(self, at_exit: bool = False) -> None:
        """Stop the live engine (its memory freed for the next start). `at_exit`: this
        process exits next, so an idle engine is dropped (Engine.drop) instead of waited for
        through its graceful teardown."""
        if self.engine is None:
            return
        from runner.console.logs import redirected

        engine, self.engine, self.key = self.engine, None, None
        try:
            with redirected():  # the engine's shutdown lines go to the engine log too
                if at_exit:
                    engine.drop()
                else:
                    engine.shutdown()
        finally:
            self._scope.close()

    def end(self) -> None:
        """The end of the command, its results stored and shown: no engine process, and
        no resource tracker, outlives it; none is waited for longer than its death takes."""
        from runner.engine.reap import stop_resource_tracker

        self.shutdown(at_exit=True)
        if self.starts:
            stop_resource_tracker()


SLOT = EngineSlot()


def children() -> set[int]:
    """The pids of this process's child processes (from /proc)."""
    me, out = str(os.getpid()), set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and (d / "stat").read_text().rsplit(")", 1)[1].split()[1] == me:
                out.add(int(d.name))
        except (OSError, IndexError):
            pass
    return out
