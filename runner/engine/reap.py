"""Stopping an engine's processes at once, for the end of the command (EngineSlot.end): kill
them with SIGKILL and reap every one. Then multiprocessing's resource tracker, the last child
of this process, is stopped and waited for: it removes the shared memory and semaphores the
killed processes registered and did not remove. Linux only (/proc); standard library only."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
REAP_TIMEOUT_S = 30.0  # a SIGKILLed process is gone in milliseconds; this bounds a stuck exit


def _parents() -> dict[int, int]:
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with suppress(OSError, IndexError, ValueError):
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return out


def descendants(pids: Iterable[int]) -> list[int]:
    """Every process below these ones (children first seen first), from /proc."""
    parent = _parents()
    kids: dict[int, list[int]] = {}
    for q, p in parent.items():
        kids.setdefault(p, []).append(q)
    out: list[int] = []
    todo = list(pids)
    while todo:
        for q in kids.get(todo.pop(), []):
            out.append(q)
            todo.append(q)
    return out


@contextmanager
def subreaper() -> Iterator[None]:
    """Processes orphaned meanwhile (a killed engine core's workers) become children of this
    process, so it can reap them (PID 1 of a container may never do so)."""
    libc = ctypes.CDLL(None, use_errno=True)
    on = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if on:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def gone(pid: int) -> bool:
    """Reaped (here or by its parent), or a zombie that is not this process's to reap."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X") and _parents().get(pid) != os.getpid()


def reap(pids: Iterable[int], timeout: float = REAP_TIMEOUT_S) -> list[int]:
    """Wait until each of these (already killed) processes is gone; the ones still there
    after `timeout`."""
    left, end = list(pids), time.monotonic() + timeout
    while left and time.monotonic() < end:
        left = [p for p in left if not gone(p)]
        if left:
            time.sleep(0.005)
    return left


def kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def quiet_resource_tracker() -> None:
    """Before the engine's first start (the resource tracker starts with it and takes this
    process's -W options): the tracker does not warn when it removes what a killed engine
    registered ("There appear to be N leaked shared_memory objects"): at the end of the
    command that is how the engine's shared memory and semaphores go, not a leak."""
    opt = "ignore:resource_tracker:UserWarning"
    if opt not in sys.warnoptions:
        sys.warnoptions.append(opt)


def stop_resource_tracker(timeout: float = REAP_TIMEOUT_S) -> None:
    """What multiprocessing does at an ordinary exit (its exit hook: this process's own
    semaphores unlinked and unregistered, its children joined: the engine's are reaped by
    now), then this process's end of the resource tracker's pipe closed: the tracker exits
    once no process holds one. Waited for, so it does not outlive the command."""
    from multiprocessing import resource_tracker, util

    util._exit_function()  # noqa: SLF001 - the atexit hook os._exit skips
    rt = resource_tracker._resource_tracker  # noqa: SLF001 - no public way to stop it
    fd, pid = getattr(rt, "_fd", None), getattr(rt, "_pid", None)
    if fd is None or pid is None:
        return
    rt._fd = rt._pid = None  # noqa: SLF001
    os.close(fd)
    reap([pid], timeout)
