"""The run index: <store.root>/index.sqlite, one row per run folder.

The folders are the source of truth; the index is a cache for `python -m runner.results ls`.
`sync` rebuilds it when it is missing, corrupt or of an older schema, and re-reads any folder
whose files changed since its row was written (or drops rows whose folder is gone). Writers use
WAL and a busy timeout with short transactions, so runs finishing at once never corrupt it.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runner.files import locked, read_json, read_yaml
from runner.store.record import counts, read_records, result_files

INDEX_NAME = "index.sqlite"
SCHEMA_VERSION = 1
COLUMNS = ("hash", "created", "finished", "status", "model", "prompts", "overrides",
           "temperature", "top_p", "max_tokens", "seed", "n", "items_stored", "items_errored",
           "prompt_tokens", "completion_tokens", "tokens_per_s", "metrics", "sig", "indexed_at")
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
  hash TEXT PRIMARY KEY, created TEXT, finished TEXT, status TEXT, model TEXT, prompts TEXT,
  overrides TEXT, temperature REAL, top_p REAL, max_tokens INTEGER, seed INTEGER, n INTEGER,
  items_stored INTEGER, items_errored INTEGER, prompt_tokens INTEGER,
  completion_tokens INTEGER, tokens_per_s REAL, metrics TEXT, sig TEXT, indexed_at TEXT);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
PRAGMA user_version = {SCHEMA_VERSION};
"""


def run_dirs(root: Path) -> Iterator[Path]:
    """Run folders: <root>/<hash>/ with a manifest (dot folders are locks and sweeps)."""
    if root.is_dir():
        for p in root.iterdir():
            if not p.name.startswith(".") and (p / "manifest.json").is_file():
                yield p


def signature(run_dir: Path) -> str:
    """Changes whenever the manifest, metrics or results change (results grow while running)."""
    parts = []
    for f in [run_dir / "manifest.json", run_dir / "metrics.json", *result_files(run_dir)]:
        try:
            st = f.stat()
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append("-")
    return "|".join(parts)


def read_row(run_dir: Path) -> dict[str, Any] | None:
    """The index row of one run folder, or None if it has no readable manifest."""
    sig = signature(run_dir)  # before reading, so a concurrent change makes the row stale
    m = read_json(run_dir / "manifest.json")
    if not isinstance(m, dict):
        return None
    cfg = read_yaml(run_dir / "config.yaml", {})
    sampling = cfg.get("sampling") or m.get("sampling") or {}
    overrides = read_yaml(run_dir / "overrides.yaml") or m.get("overrides") or []
    metrics = read_json(run_dir / "metrics.json")
    # Counted from the results, not the manifest: the manifest's tokens cover only the last
    # invocation, and a resumed run must count every item it stores.
    c = counts(read_records(run_dir).values())
    created = m.get("created") or datetime.fromtimestamp(
        (run_dir / "manifest.json").stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    return {
        "hash": run_dir.name, "created": created, "finished": m.get("finished"),
        "status": m.get("status"), "model": m.get("model") or (cfg.get("model") or {}).get("name"),
        "prompts": m.get("prompts") or (cfg.get("prompts") or {}).get("name"),
        "overrides": json.dumps(overrides), "temperature": sampling.get("temperature"),
        "top_p": sampling.get("top_p"), "max_tokens": sampling.get("max_tokens"),
        "seed": sampling.get("seed"), "n": sampling.get("n"),
        "items_stored": c.stored, "items_errored": c.errors, "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "tokens_per_s": (m.get("throughput") or {}).get("completion_tokens_per_s"),
        "metrics": json.dumps(metrics) if isinstance(metrics, dict) else None,
        "sig": sig, "indexed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _repair_lock(root: Path) -> Any:
    """Serialises building or replacing the index so two processes never undo each other."""
    return locked(root / ".locks" / "index.lock")


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=30, isolation_level=None)  # explicit transactions
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA busy_timeout = 30000")
    return con


def _corrupt(e: sqlite3.DatabaseError) -> bool:
    """Not a database / malformed, as opposed to busy or unopenable (never discard for those)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
    return any(s in str(e) for s in ("not a database", "malformed"))


def _current(con: sqlite3.Connection) -> bool:
    """True if the index has the current schema; raises if the file is not SQLite."""
    if con.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
        return False
    return con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'runs'").fetchone()[0] > 0


def _repair(root: Path) -> None:
    """Deletes a corrupt index, unless another process already replaced it."""
    path = root / INDEX_NAME
    with _repair_lock(root):
        try:
            con = _connect(path)
            try:
                _current(con)
                return
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            if not _corrupt(e):
                raise
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            p.unlink(missing_ok=True)


def _write(con: sqlite3.Connection, rows: list[dict[str, Any]], drop: tuple[str, ...] = (),
           create: bool = False) -> None:
    """One short transaction (rows are read from disk before it starts). `create` replaces
    the whole table atomically: readers see the old index or the new one, never none."""
    if create:
        con.execute("PRAGMA journal_mode = WAL")  # persistent: readers never block the writer
    con.execute("BEGIN IMMEDIATE")
    try:
        if create:
            con.execute("DROP TABLE IF EXISTS runs")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
        con.executemany("DELETE FROM runs WHERE hash = ?", [(h,) for h in drop])
        con.executemany(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join(':' + c for c in COLUMNS)})", rows)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _all_rows(root: Path) -> list[dict[str, Any]]:
    return [r for d in run_dirs(root) if (r := read_row(d))]


def open_index(root: Path) -> sqlite3.Connection:
    """The index, built from the folders if it is missing, corrupt or of an older schema."""
    root = Path(root)
    for attempt in (0, 1):
        con = _connect(root / INDEX_NAME)
        try:
            if not _current(con):
                with _repair_lock(root):
                    if not _current(con):  # unless another process built it while we waited
                        _write(con, _all_rows(root), create=True)
            return con
        except sqlite3.DatabaseError as e:
            con.close()
            if attempt or not _corrupt(e):
                raise
            _repair(root)
    raise AssertionError("unreachable")


def sync(root: Path) -> sqlite3.Connection:
    """The index brought up to date with the folders: stale rows re-read, gone ones dropped."""
    root = Path(root)
    for attempt in (0, 1):
        con = open_index(root)
        try:
            indexed = {r["hash"]: r["sig"] for r in con.execute("SELECT hash, sig FROM runs")}
            dirs = {d.name: d for d in run_dirs(root)}
            stale = [d for h, d in dirs.items() if indexed.get(h) != signature(d)]
            gone = tuple(h for h in indexed if h not in dirs)
            if stale or gone:
                _write(con, [r for d in stale if (r := read_row(d))], drop=gone)
            return con
        except sqlite3.DatabaseError as e:  # corrupt beyond the header: start over once
            con.close()
            if attempt or not _corrupt(e):
                raise
            _repair(root)
    raise AssertionError("unreachable")


def rebuild(store_root: Path) -> int:
    """Rebuilds the index from the run folders; returns the number of runs indexed."""
    root = Path(store_root)
    con = open_index(root)
    try:
        with _repair_lock(root):
            rows = _all_rows(root)
            _write(con, rows, create=True)
        return len(rows)
    finally:
        con.close()


def upsert(store_root: Path, run_dir: Path) -> None:
    """Records one run (the runner calls this at the end of every run).

    Never raises for index problems: the index is a cache, and a finished run must not fail
    because of it; the next `sync` repairs whatever was missed.
    """
    try:
        con = open_index(Path(store_root))
        try:
            known = con.execute("SELECT sig FROM runs WHERE hash = ?", (Path(run_dir).name,))
            if (r := known.fetchone()) and r[0] == signature(Path(run_dir)):
                return  # unchanged since indexed (a cache hit): nothing to read
            row = read_row(Path(run_dir))
            _write(con, [row] if row else [], drop=() if row else (Path(run_dir).name,))
        finally:
            con.close()
    except (sqlite3.Error, OSError) as e:
        print(f"warning: run index not updated ({e}); it is rebuilt on next use.",
              file=sys.stderr)


def remove(store_root: Path, run_hash: str) -> None:
    con = open_index(Path(store_root))
    try:
        _write(con, [], drop=(run_hash,))
    finally:
        con.close()
