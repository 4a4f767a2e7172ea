"""Engine output -> <run>/engine.log, so the console shows only the runner's own display.

vLLM, its engine-core and worker processes, torch's C++ side and friends write to fd 1/2 (vLLM's
logging handler writes to sys.stdout; see VLLM_LOGGING_STREAM). While a computed run is in
progress, fd 1/2 of this process point at a pipe, and the processes vLLM spawns inherit it. One
thread pumps the pipe into the current sink: first a start log in <store>/.logs (the run folder
exists only once the engine has started), then <run>/engine.log. The pipe lives as long as the
process, so an engine reused by the next sweep point logs into that point's folder. The rich
console keeps writing to a duplicate of the real terminal.
"""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import sys
import termios
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from runner.console import console
from runner.errors import EngineFailed, Interrupted, RunFailed, StartFailed, UserError, disk_full

TAIL = 20  # lines shown when a run fails

class _Pump:
    """fd 1/2 -> pipe -> the current sink, whole lines at a time."""

    def __init__(self) -> None:
        r, self.w = os.pipe()
        self.lock = threading.Lock()
        self.sink: BinaryIO | None = None
        self.phase = ""
        self._partial = b""
        self._marker, self._drained = b"", threading.Event()
        threading.Thread(target=self._run, args=(r,), daemon=True, name="engine-log").start()

    def _run(self, r: int) -> None:
        while chunk := os.read(r, 1 << 16):
            with self.lock:
                data = self._partial + chunk
                if self._marker and self._marker in data:
                    data = data.replace(self._marker, b"")
                    self._drained.set()
                end = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
                self._partial = data[end:]
                if end:
                    self._write(data[:end])

    def _write(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink.write(data)
        for line in data.decode(errors="replace").splitlines():
            for rx, name in _phases:
                if rx.search(line):
                    self.phase = name

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until what was written to the pipe so far has reached the sink."""
        self._drained.clear()
        self._marker = f"\0drained {time.monotonic_ns()}\0\n".encode()
        os.write(self.w, self._marker)
        self._drained.wait(timeout)

    def switch(self, dest: Path, copy: Path | None = None) -> None:
        """Further output goes to `dest` (appended), after the whole of `copy`."""
        with self.lock:  # nothing is pumped meanwhile
            if self._partial and self.sink is not None:
                self.sink.write(self._partial)
                self._partial = b""
            sink = open(dest, "ab", buffering=0)
            if copy is not None:
                sink.write(copy.read_bytes())
            old, self.sink = self.sink, sink
        if old is not None:
            old.close()


_pump: _Pump | None = None


def drain() -> None:
    """What the engine's processes wrote so far is in the engine log (before an exit)."""
    if _pump is not None:
        _pump.drain()


_phases: list[tuple[re.Pattern[str], str]] = []  # the starting engine's (runner/engine)


def watch_phases(phases: list[tuple[re.Pattern[str], str]]) -> None:
    """The log lines that name an engine start's phases: the engine boundary knows them."""
    _phases[:] = phases


class _OffConsole:
    """A handler filter: outside a redirected scope, a record goes to the pump instead of the
    handler (which writes to fd 1/2, the terminal again)."""

    def __init__(self) -> None:
        import logging

        self.fmt = logging.Formatter("(%(processName)s pid=%(process)d) %(levelname)s "
                                     "%(asctime)s [%(filename)s:%(lineno)d] %(message)s")

    def filter(self, record: object) -> bool:
        if _redirected_depth or _pump is None or not _pumped:
            return True
        try:
            os.write(_pump.w, (self.fmt.format(record) + "\n").encode(  # type: ignore[arg-type]
                errors="replace"))
        except OSError:
            pass
        return False


_pumped: set[str] = set()  # the loggers (vLLM's) kept off the console; empty: log.engine=console
_redirected_depth = 0


def loggers_to_pump(*names: str) -> None:
    """These loggers (vLLM's, in this process) keep off the console for good: a thread vLLM
    leaves running after a start the plan stopped (its multi-modal warmup) logs after fd 1/2
    point back at the terminal. Their handlers get the filter when a redirected scope ends
    (vLLM configures its logging inside the start, and again in the next). Only while the
    engine's output is captured."""
    log = current()
    if _pump is None or log is None or not log.capture:
        return
    _pumped.update(names)


def _guard_handlers() -> None:
    import logging

    for name in _pumped:
        for h in logging.getLogger(name).handlers:
            if not any(isinstance(f, _OffConsole) for f in h.filters):
                h.addFilter(_OffConsole())  # type: ignore[arg-type]


def flush_std() -> None:
    """Flush stdout and stderr, whatever state they are in (closed, a broken pipe)."""
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (OSError, ValueError):
            pass


@contextmanager
def redirected() -> Iterator[None]:
    """fd 1/2 -> the pump (once there is one) for this scope; the console keeps the terminal."""
    if _pump is None:
        yield
        return
    flush_std()
    saved = [os.dup(1), os.dup(2)]
    term = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    old_file, old_size = console._file, (console._width, console._height)
    console.file = term
    if term.isatty() and (size := os.get_terminal_size(term.fileno())).columns:
        console.size = (size.columns, size.lines or 25)  # rich reads fd 0/1/2 (a pipe soon)
    os.dup2(_pump.w, 1)
    os.dup2(_pump.w, 2)
    global _redirected_depth
    _redirected_depth += 1
    try:
        yield
    finally:
        _guard_handlers()
        _redirected_depth -= 1
        flush_std()
        _pump.drain()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        console.file = old_file  # type: ignore[assignment]
        console._width, console._height = old_size
        term.close()


@contextmanager
def ctrl_c_to_runner_only() -> Iterator[None]:
    """A terminal's Ctrl-C signals its whole foreground process group, so vLLM's engine core
    and workers would stop on their own, out of the order the client shuts them down in (the
    core's RPC is cancelled, shared memory leaks). While the engine runs, the terminal does not
    turn Ctrl-C into SIGINT: a thread reads it and signals this process only, which then
    shuts the engine down in order."""
    fd = 0
    try:
        foreground = os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        foreground = False
    if not foreground:  # no terminal, or in the background (tcsetattr would stop us)
        yield
        return
    old = termios.tcgetattr(fd)
    new = termios.tcgetattr(fd)
    new[3] &= ~(termios.ISIG | termios.ICANON | termios.ECHO)
    new[6][termios.VMIN], new[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, new)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if select.select([fd], [], [], 0.2)[0]:
                key = os.read(fd, 1)
                if key == b"\x03":
                    os.kill(os.getpid(), signal.SIGINT)
                elif not key:
                    return

    def terminated(signum: int, _frame: object) -> None:  # SIGTERM's default would leave
        raise SystemExit(128 + signum)                    # the terminal without echo

    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, terminated) if main else None
    t = threading.Thread(target=watch, daemon=True, name="ctrl-c")
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
        if main:
            signal.signal(signal.SIGTERM, before)


class EngineLog:
    """One invocation's engine log: a start log in <root>/.logs until `attach` moves it into
    the run folder. `path` is where the log is now."""

    def __init__(self, root: Path, run_hash: str, capture: bool):
        self.capture = capture
        self.path = Path(root) / ".logs" / f"{run_hash}.{os.getpid()}.start.log"
        self.start: Path | None = self.path  # None once moved into the run folder
        self.created: list[Path] = []

    def open(self) -> None:
        global _pump
        d = self.path.parent
        while not d.exists():  # folders this creates: removed again if nothing is kept
            self.created.append(d)
            d = d.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if _pump is None:
            _pump = _Pump()
        _pump.phase = ""
        with open(self.path, "a") as f:
            f.write(header())
        _pump.switch(self.path)

    def attach(self, run_dir: Path) -> None:
        """The run folder exists: append the start log to <run>/engine.log and log there."""
        if not self.capture or self.start is None or _pump is None:
            return
        dest = run_dir / "engine.log"
        _pump.switch(dest, copy=self.start)
        self.start.unlink(missing_ok=True)
        self.path, self.start = dest, None

    def discard(self) -> None:
        """Nothing ran (or a user error said it all): no start log to keep."""
        if self.start is not None:
            self.start.unlink(missing_ok=True)
            for d in self.created:  # innermost first; stops at one that is not empty
                try:
                    d.rmdir()
                except OSError:
                    break

    @property
    def phase(self) -> str:
        return _pump.phase if _pump is not None and self.capture else ""


def header() -> str:
    cmd = " ".join(shlex.quote(a) for a in sys.argv)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"\n===== {when} · pid {os.getpid()} · {cmd} =====\n"


_current: EngineLog | None = None


def current() -> EngineLog | None:
    """The engine log of the run in progress, if any."""
    return _current


def attach(run_dir: Path) -> None:
    if _current is not None:
        _current.attach(run_dir)


@contextmanager
def engine_log(root: Path, run_hash: str, target: str) -> Iterator[EngineLog]:
    """Engine output of this scope into the run's engine.log (target "file"), or left on the
    console (target "console"). Another failure than a user error or an interrupt is written
    to the log with its traceback and re-raised as RunFailed, which names the log; the start
    log outside the run folder is kept only then."""
    global _current
    log = _current = EngineLog(root, run_hash, capture=target == "file")
    if not log.capture:  # log.engine=console: vLLM's lines show, the filters let them pass
        _pumped.clear()
    lines: list[str] = []
    try:
        if not log.capture:
            with ctrl_c_to_runner_only():
                yield log
            return
        log.open()
        try:
            with redirected(), ctrl_c_to_runner_only():
                try:
                    yield log
                except Exception as e:
                    if (full := disk_full(e, Path(root).resolve())) is not None:
                        raise full from None  # the user's to fix: a sentence, not a log tail
                    if not isinstance(e, (UserError, Interrupted)):
                        assert _pump is not None
                        _pump.drain()
                        lines = tail(log.path)  # what the engine said, before our traceback
                        traceback.print_exc()  # into the log
                    raise
        except (UserError, Interrupted, KeyboardInterrupt):
            log.discard()
            raise
        except Exception as e:
            # ours say it in a sentence already; anything else is named by its type
            msg = str(e) if isinstance(e, (StartFailed, EngineFailed)) else \
                f"{type(e).__name__}: {e}"
            raise RunFailed(msg, log.path, lines, getattr(e, "exit_code", 1)) from e
        log.discard()
    finally:
        _current = None


def tail(path: Path, n: int = TAIL) -> list[str]:
    """The last `n` non-blank lines of a log file ([] if there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - (1 << 16)))
            data = f.read()
    except OSError:
        return []
    lines = data.decode(errors="replace").replace("\r", "\n").splitlines()
    return [ln for ln in lines if ln.strip()][-n:]
