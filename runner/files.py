"""File helpers for every writer and reader: one atomic writer, lenient JSON/JSONL/YAML
readers, one lock helper, and the collector paused for bulk reads. No heavy imports: the
results CLI must start fast."""

from __future__ import annotations

import base64
import fcntl
import gc
import json
import mimetypes
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path, data: str | bytes | Callable[[IO[bytes]], None], *,
                 sync: bool = True) -> None:
    """Write a temp file beside `path` (text, bytes, or a function writing to the open file),
    fsync it unless `sync` is False, rename it over `path`: readers see the old file or the
    new one, never a part. Safe across processes and threads."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cut_torn_tail(path: Path) -> None:
    """Cut a last line torn by a kill (no newline yet) off an append-only JSONL file, so the
    next append starts a line of its own. Only the file's one writer may call this."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or `default` if it is missing, unreadable or of another type
    than a non-None `default`."""
    try:
        v = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default
    return v if default is None or isinstance(v, type(default)) else default


def read_yaml(path: Path, default: Any = None) -> Any:
    """Like read_json, for YAML (safe_load)."""
    import yaml

    try:
        v = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return default
    return v if default is None or isinstance(v, type(default)) else default


_gc_lock = threading.Lock()
_gc = {"depth": 0, "was_on": True}  # blocks inside gc_paused, in any thread


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while the block builds many long-lived objects (100k
    records or plan items): the collections their number triggers would double the time.
    Counted across threads (the plan and the thumbnails run beside the job): the first block
    in switches the collector off, the last one out restores it. Nothing is frozen: the
    objects stay collectable (vLLM's among them)."""
    with _gc_lock:
        if _gc["depth"] == 0:
            _gc["was_on"] = gc.isenabled()
            gc.disable()
        _gc["depth"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc["depth"] -= 1
            if _gc["depth"] == 0 and _gc["was_on"]:
                gc.enable()
def read_jsonl(path: Path) -> list[Any]:
    """The complete lines of a JSONL file, parsed; a torn last line (no newline yet) and
    unparseable lines are skipped. A missing file has no lines."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    data = data[: data.rfind(b"\n") + 1]
    try:  # one decode, not one a line; split on \n only (an output may hold U+2028)
        lines: list[Any] = data.decode().split("\n")
    except UnicodeDecodeError:  # a damaged line: json.loads skips that one
        lines = data.split(b"\n")
    out = []
    with gc_paused():
        if isinstance(lines[0], str):  # the usual case: every line whole, parsed in one call
            whole = [x for x in lines if x.strip()]
            try:
                out = json.loads("[" + ",".join(whole) + "]")
            except ValueError:
                out = []
            if len(out) == len(whole):
                return out
            out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn line followed by later appends
    return out


class LockBusy(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


@contextmanager
def locked(path: Path, *, shared: bool = False, wait: bool = True,
           on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an OS lock (flock) on `path`, created if missing; the kernel releases it if the
    holder dies. If it is taken: raise LockBusy unless `wait`, else tell `on_wait` who holds
    it and block. An exclusive holder writes "pid N on HOST" into the file for others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                raise LockBusy(holder) from None
            if on_wait:
                on_wait(holder)
            fcntl.flock(fd, mode)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)


def data_url(path: str | Path) -> str:
    """A file as a data: URL of its own bytes; the MIME type is read from the bytes (a cached
    copy's name need not say its format), else guessed from the name."""
    data = Path(path).read_bytes()
    mime = ("image/png" if data[:4] == b"\x89PNG" else "image/jpeg" if data[:2] == b"\xff\xd8"
            else "image/gif" if data[:4] == b"GIF8" else "image/webp" if data[8:12] == b"WEBP"
            else mimetypes.guess_type(str(path))[0] or "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"
