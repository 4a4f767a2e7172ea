"""`retry_errors`: queue a run's error records again (docs/errors.md, "Retrying errors").

results.jsonl keeps its promise of one line per item key, so a retried record leaves it before
its item runs again:

1. its line is appended to <run>/errors.history.jsonl (fsynced; a line already there is not
   written twice),
2. the results file is replaced by a copy without it (files.atomic_write: readers see the old
   file or the new one),
3. the item runs like any item not stored yet; its new record is appended.

All of it happens under the run's write lock, before the results writer opens the file. A kill
between 1 and 2 leaves the record in both files (the next retry finds its history line there
already); a kill after 2 leaves the item not stored, so any rerun computes it. Either way
nothing is lost and no key is in results.jsonl twice.

A shard rewrites only its own results file (other shards may be appending to theirs); an
unsharded run holds the run lock alone and may rewrite every shard's file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path

from runner.console import console
from runner.files import atomic_write, cut_torn_tail, read_jsonl
from runner.kinds import by_kind, kind_of, kinds_text
from runner.store.record import Record, result_files
from runner.store.rundir import RunDir

HISTORY = "errors.history.jsonl"


def own_files(rd: RunDir) -> list[Path]:
    """The results files this writer may rewrite."""
    return result_files(rd.path) if rd.shard[1] == 1 else [rd.results]


def retryable(rd: RunDir, stored: dict[str, Record], kinds: Collection[str]) -> set[str]:
    """Keys of the stored error records of these kinds that this writer can retry."""
    if not kinds:
        return set()
    errs = {k for k, r in stored.items() if kind_of(r) in kinds}
    if not errs:
        return set()
    own = set(own_files(rd))
    held = {r["key"] for f in result_files(rd.path) if f not in own
            for r in read_jsonl(f) if isinstance(r, dict) and r.get("key") in errs}
    return errs - held


def _key(line: bytes) -> str | None:
    try:
        r = json.loads(line)
    except ValueError:
        return None
    return r.get("key") if isinstance(r, dict) else None


def retire(rd: RunDir, records: dict[str, Record]) -> None:
    """Move these records' lines out of the results files into HISTORY (the steps above).
    The caller holds the run's write lock and has no results writer open."""
    if not records:
        return
    cuts: list[tuple[Path, list[bytes]]] = []  # each file and the lines it keeps
    moved: list[bytes] = []
    for f in own_files(rd):
        data = f.read_bytes()
        lines = data[: data.rfind(b"\n") + 1].splitlines(keepends=True)  # a torn tail goes
        keep: list[bytes] = []
        for ln in lines:
            (moved if _key(ln) in records else keep).append(ln)
        if len(keep) < len(lines):
            cuts.append((f, keep))
    hist = rd.path / HISTORY
    cut_torn_tail(hist)
    have = set(hist.read_bytes().splitlines(keepends=True)) if hist.exists() else set()
    with open(hist, "ab") as fh:
        fh.write(b"".join(ln for ln in moved if ln not in have))
        fh.flush()
        os.fsync(fh.fileno())
    for f, keep in cuts:
        atomic_write(f, b"".join(keep))
    kinds = kinds_text(by_kind(kind_of(r) for r in records.values()))
    console.print(f"retrying {len(records)} error records ({kinds}); the replaced lines are "
                  f"kept in {HISTORY}", highlight=False)
