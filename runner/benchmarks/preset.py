"""`prompts=mmmu` (conf/prompts/<bench>.yaml): a benchmark preset, imported on first use into
the store's cache (<store.root>/.cache/benchmarks/<name>/), then planned like any set. One
root for every benchmark, so a multirun over them keeps one engine (its media root). The
set's `imported.json` holds a key of the benchmark, the source (a local one's files, sizes and
mtimes) and `prompts.limit`: a changed source or limit imports again. The first `limit` rows
are the subset (deterministic: the source's order)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from runner.benchmarks.build import import_benchmark
from runner.benchmarks.importers import PROTOCOL
from runner.console import console
from runner.errors import UserError
from runner.files import atomic_write, locked, read_json


def _stamp(source: str) -> list[Any]:
    p = Path(source)
    if not p.exists():
        return [source]
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    return [str(p.resolve())] + [[str(f), f.stat().st_size, f.stat().st_mtime_ns]
                                 for f in files]


def cache_root(store_root: str) -> Path:
    """Where every benchmark's set is imported: the `prompts.root` a preset runs with."""
    return Path(store_root) / ".cache" / "benchmarks"


def resolve(cfg: DictConfig) -> None:
    """Import `prompts.benchmark` if its set is not in the cache yet; point `prompts.root`
    at it. A no-op for ordinary sets."""
    p = cfg.prompts
    bench = p.get("benchmark")
    if not bench:
        return
    if bench not in PROTOCOL:
        raise UserError(f"prompts.benchmark={bench} is not one of {', '.join(PROTOCOL)}.")
    source = p.get("source") or PROTOCOL[bench]["dataset"]
    # a folder of several benchmarks' sources, by name (NAME/, NAME.parquet or NAME.jsonl):
    # one `prompts.source` serves a multirun over them
    named = [Path(source) / f"{bench}{ext}" for ext in ("", ".parquet", ".jsonl")]
    if Path(source).is_dir() and (hit := next((n for n in named if n.exists()), None)):
        source = str(hit)
    key = hashlib.sha256(json.dumps([bench, _stamp(source), p.get("limit")]).encode())
    root = cache_root(cfg.store.root)
    set_dir = root / str(p.name)
    stamp = set_dir / "imported.json"
    want = {"benchmark": bench, "source": source, "limit": p.get("limit"),
            "key": key.hexdigest()}

    def fresh() -> bool:
        return (set_dir / "set.yaml").exists() and read_json(stamp) == want

    if not fresh():
        with locked(root / f".{p.name}.lock"):
            if not fresh():  # another process may have imported it meanwhile
                console.print(f"importing {bench} from {source} into {set_dir}")
                import_benchmark(bench, source, set_dir, limit=p.get("limit"), force=True)
                atomic_write(stamp, json.dumps(want))
    with open_dict(cfg):
        cfg.prompts.root = str(root)
