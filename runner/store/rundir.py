"""Stage 4, store: results addressed by the hash of the config that produced them.

Layout: <root>/<hash>/{config.yaml, overrides.yaml, manifest.json, results.jsonl}.
results.jsonl is append-only, one record per item keyed by the item's content digest; a line
torn by a kill is dropped on the next open. manifest.json is replaced atomically. One writer
per run: an OS lock on <root>/.locks/<hash>.lock, released by the kernel if the holder dies.
Shard i of n writes results.<i>-of-<n>.jsonl under its own lock (holding the run lock
shared, so an unsharded writer excludes all shards); readers merge every results*.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import HASHED_GROUPS, RUNTIME_ENGINE_ARGS, ApiConfig, container, marked
from runner.errors import UserError
from runner.files import LockBusy, atomic_write, cut_torn_tail, locked, read_json
from runner.plan.sampling import checked_sampling
from runner.store.record import Record, read_records

__all__ = ["HASH_LEN", "ResultWriter", "RunDir", "hashed_config", "run_hash"]

HASH_LEN = 16


def hashed_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved fields that change results (docs/runs.md, "The run hash")."""
    c = container(cfg)
    out = {g: {k: c[g][k] for k in marked(cls, "hash")} for g, cls in HASHED_GROUPS.items()}
    out["engine"]["extra"] = {k: v for k, v in out["engine"]["extra"].items()
                              if k not in RUNTIME_ENGINE_ARGS}
    out["sampling"] = checked_sampling(out["sampling"])  # empty structured_outputs left out
    if out["model"].get("mm_processor_kwargs") is None:  # unset: hashes as before it existed
        out["model"].pop("mm_processor_kwargs", None)
    api = out["model"].pop("api", None) or {}  # a hosted model's id and provider, if any
    if api.get("url"):
        out["model"]["api"] = {k: api[k] for k in marked(ApiConfig, "hash")}
    return out


def run_hash(cfg: DictConfig) -> str:
    """The first HASH_LEN hex digits of the SHA-256 of `hashed_config` as canonical JSON."""
    blob = json.dumps(hashed_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_LEN]


class ResultWriter:
    """Appends records; flushes each, fsyncs every `every` records or `seconds` seconds."""

    def __init__(self, path: Path, every: int = 16, seconds: float = 2.0):
        self.f = open(path, "ab")
        self.every, self.seconds = every, seconds
        self.pending, self.last = 0, time.monotonic()

    def write(self, record: Record) -> None:
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

    def read_results(self) -> dict[str, Record]:
        """Stored records by item key, all shards merged (runner.store.record's rules)."""
        return read_records(self.path)

    def _repair(self) -> None:
        """Cut a torn last line off our own results file (we hold its lock)."""
        cut_torn_tail(self.results)

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path, {})

    def write_manifest(self, m: dict[str, Any]) -> None:
        atomic_write(self.manifest_path, json.dumps(m, indent=2, sort_keys=True) + "\n")

    def update_manifest(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read-modify-write under a short lock: shards of one run share the manifest."""
        with locked(self.locks / f"{self.hash}.manifest.lock"):
            m = self.manifest() or {"hash": self.hash}
            change(m)
            self.write_manifest(m)
        return m

    def create(self, cfg: DictConfig, overrides: list[str]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        atomic_write(self.path / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))

    def writer(self, every: int, seconds: float) -> ResultWriter:
        self._repair()
        return ResultWriter(self.results, every, seconds)

    @contextmanager
    def lock(self, wait: bool, on_wait: Callable[[str], None]) -> Iterator[None]:
        """Lock for writing this run (or this shard); the kernel drops it if the holder dies.
        A shard holds the run lock shared, so an unsharded writer excludes every shard."""
        i, n = self.shard
        held = ExitStack()
        try:
            held.enter_context(locked(self.locks / f"{self.hash}.lock", shared=n > 1,
                                      wait=wait, on_wait=on_wait))
            if n > 1:
                held.enter_context(locked(self.locks / f"{self.hash}.{i}-of-{n}.lock",
                                          wait=wait, on_wait=on_wait))
        except LockBusy as e:
            held.close()
            raise UserError(f"Run {self.hash} is being written by {e.holder}; "
                            "rerun later or drop store.wait=false to wait.") from None
        with held:
            yield
