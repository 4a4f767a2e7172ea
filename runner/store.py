"""Stage 4: results addressed by the hash of the config that produced them.

Layout: <root>/<hash>/{config.yaml, overrides.yaml, manifest.json, results.jsonl}.
results.jsonl is append-only, one record per item keyed by the item's content digest; a line
torn by a kill is dropped on the next open. manifest.json is replaced atomically. One writer
per run: an OS lock on <root>/.locks/<hash>.lock, released by the kernel if the holder dies.
Shard i of n writes results.<i>-of-<n>.jsonl under its own lock (holding the run lock
shared, so an unsharded writer excludes all shards); readers merge every results*.jsonl.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import (
    ENGINE_HASHED,
    RUNTIME_ENGINE_ARGS,
    ModelConfig,
    PromptsConfig,
    SamplingConfig,
)
from runner.errors import UserError
from runner.files import atomic_write, read_json

HASH_LEN = 16


def _hashed_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("hash", True)]


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved fields that change results (see README, "The run hash")."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    out: dict[str, Any] = {}
    for group, cls in (("model", ModelConfig), ("sampling", SamplingConfig),
                       ("prompts", PromptsConfig)):
        out[group] = {k: c[group][k] for k in _hashed_fields(cls)}
    eng = {k: c["engine"][k] for k in ENGINE_HASHED}
    eng["extra"] = {k: v for k, v in eng["extra"].items() if k not in RUNTIME_ENGINE_ARGS}
    out["engine"] = eng
    return out


def run_hash(cfg: DictConfig) -> str:
    blob = json.dumps(hashed_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_LEN]


class ResultWriter:
    """Appends records; flushes each, fsyncs every `every` records or `seconds` seconds."""

    def __init__(self, path: Path, every: int = 16, seconds: float = 2.0):
        self.f = open(path, "ab")
        self.every, self.seconds = every, seconds
        self.pending, self.last = 0, time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        self.f.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
        self.f.flush()
        self.pending += 1
        if self.pending >= self.every or time.monotonic() - self.last >= self.seconds:
            self.sync()

    def sync(self) -> None:
        os.fsync(self.f.fileno())
        self.pending, self.last = 0, time.monotonic()

    def close(self) -> None:
        if not self.f.closed:
            self.sync()
            self.f.close()


class RunDir:
    def __init__(self, root: str | Path, run_hash: str, shard: tuple[int, int] = (0, 1)):
        self.root = Path(root)
        self.hash = run_hash
        self.shard = shard
        self.path = self.root / run_hash
        i, n = shard
        self.results = self.path / ("results.jsonl" if n == 1 else f"results.{i}-of-{n}.jsonl")
        self.manifest_path = self.path / "manifest.json"
        self.locks = self.root / ".locks"

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def read_results(self, repair: bool = False) -> dict[str, dict[str, Any]]:
        """Stored records by item key, all shards merged. A torn last line is ignored
        (and cut off our own file if `repair`: we hold its lock)."""
        out: dict[str, dict[str, Any]] = {}
        for f in sorted(self.path.glob("results*.jsonl")):
            data = f.read_bytes()
            end = data.rfind(b"\n") + 1
            if repair and f == self.results and end < len(data):
                with open(f, "r+b") as fh:
                    fh.truncate(end)
            for line in data[:end].splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a torn line followed by later appends: skip it
                out.setdefault(r["key"], r)
        return out

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path, {})

    def write_manifest(self, m: dict[str, Any]) -> None:
        atomic_write(self.manifest_path, json.dumps(m, indent=2, sort_keys=True) + "\n")

    def update_manifest(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read-modify-write under a short lock: shards of one run share the manifest."""
        self.locks.mkdir(parents=True, exist_ok=True)
        with open(self.locks / f"{self.hash}.manifest.lock", "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            m = self.manifest() or {"hash": self.hash}
            change(m)
            self.write_manifest(m)
        return m

    def create(self, cfg: DictConfig, overrides: list[str]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write(self.path / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))

    def writer(self, every: int, seconds: float) -> ResultWriter:
        self.read_results(repair=True)
        return ResultWriter(self.results, every, seconds)

    @contextmanager
    def lock(self, wait: bool, on_wait: Callable[[str], None]) -> Iterator[None]:
        """Lock for writing this run (or this shard); the kernel drops it if the holder dies."""
        i, n = self.shard
        self.locks.mkdir(parents=True, exist_ok=True)
        fds = []
        try:
            if n == 1:
                fds.append(self._flock(f"{self.hash}.lock", fcntl.LOCK_EX, wait, on_wait))
            else:
                fds.append(self._flock(f"{self.hash}.lock", fcntl.LOCK_SH, wait, on_wait))
                fds.append(self._flock(f"{self.hash}.{i}-of-{n}.lock", fcntl.LOCK_EX, wait,
                                       on_wait))
            yield
        finally:
            for fd in fds:
                os.close(fd)

    def _flock(self, name: str, mode: int, wait: bool, on_wait: Callable[[str], None]) -> int:
        fd = os.open(self.locks / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                os.close(fd)
                raise UserError(f"Run {self.hash} is being written by {holder}; "
                                "rerun later or drop store.wait=false to wait.") from None
            on_wait(holder)
            fcntl.flock(fd, mode)
        if mode == fcntl.LOCK_EX:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        return fd
