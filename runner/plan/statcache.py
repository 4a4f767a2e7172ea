"""The image stat cache, like git's index: (path, size, mtime_ns, ctime_ns, inode) plus the
planning options -> the image's sha256 and what probing it found (its size as the model sees
it, the file vLLM reads, whether it was converted, or why it is a bad image). A rerun of a
finished 100k-image set stats every file instead of reading it.

Kept in the store (<store>/.cache/stat.sqlite), never in the prompt set. An entry whose file
changed in any of those fields is probed again; so is a "racy" one, whose file was modified
within RACY_NS of the moment it was hashed (a change in the same timestamp tick would not
show in mtime), as git does.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

RACY_NS = 2_000_000_000  # coarse filesystems tick in seconds (FAT: 2 s)


@dataclass(frozen=True)
class Probe:
    sha256: str
    file: str  # what vLLM reads: the original, an alias or a converted copy
    width: int
    height: int
    norm: str  # what conversion did ("" = untouched)
    error: str  # why it is a bad image ("" = good); `ref` is the reference it was written as
    ref: str


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class StatCache:
    def __init__(self, db: Path, options: str):
        self.db, self.options = db, options
        self._rows: dict[str, tuple] | None = None  # path -> its row, as SQLite gave it
        self._new: list[tuple] = []
        self._lock = threading.Lock()

    def _load(self) -> dict[str, tuple]:
        if self._rows is None:
            rows: dict[str, tuple] = {}
            if self.db.exists():
                try:
                    with sqlite3.connect(self.db, timeout=30) as con:
                        rows = {r[0]: r for r in con.execute(
                            "SELECT path, size, mtime_ns, ctime_ns, ino, seen_ns, sha256, "
                            "file, width, height, norm, error, ref FROM probe "
                            "WHERE options = ?", (self.options,))}
                except sqlite3.DatabaseError:  # a damaged cache is a cold cache
                    rows = {}
            self._rows = rows
        return self._rows

    def get(self, f: Path | str, st: os.stat_result) -> Probe | None:
        with self._lock:
            r = self._load().get(str(f))
        if r is None or r[1:5] != stat_key(st):
            return None
        if st.st_mtime_ns >= r[5] - RACY_NS:  # racy: modified around the time it was hashed
            return None
        return Probe(*r[6:])

    def put(self, f: Path, st: os.stat_result, seen_ns: int, probe: Probe) -> None:
        with self._lock:
            self._new.append((str(f), self.options, *stat_key(st), seen_ns, probe.sha256,
                              probe.file, probe.width, probe.height, probe.norm, probe.error,
                              probe.ref))

    def save(self) -> None:
        """One transaction for the plan's new entries (best effort: a cache)."""
        if not self._new:
            return
        try:
            self.db.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(self.db, timeout=30) as con:
                con.execute("CREATE TABLE IF NOT EXISTS probe (path TEXT, options TEXT, "
                            "size INT, mtime_ns INT, ctime_ns INT, ino INT, seen_ns INT, "
                            "sha256 TEXT, file TEXT, width INT, height INT, norm TEXT, "
                            "error TEXT, ref TEXT, PRIMARY KEY (path, options))")
                con.executemany("INSERT OR REPLACE INTO probe VALUES "
                                "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)", self._new)
        except (OSError, sqlite3.DatabaseError):
            pass
        self._new = []

