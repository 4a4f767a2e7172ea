"""`prompts=mmmu` (conf/prompts/<bench>.yaml): a benchmark preset, imported on first use into
the store's cache (<store.root>/.cache/benchmarks/<bench>-<key>/<name>/), then planned like any
set. The key covers the benchmark, the source (and a local source's size and mtime) and
`prompts.limit`, so a changed source or a larger limit imports again; the first `limit` rows
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
from runner.files import locked


def _stamp(source: str) -> list[Any]:
    p = Path(source)
    if not p.exists():
        return [source]
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    return [str(p.resolve())] + [[str(f), f.stat().st_size, f.stat().st_mtime_ns]
                                 for f in files]


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
    key = hashlib.sha256(json.dumps([bench, _stamp(source), p.get("limit")]).encode())
    root = Path(cfg.store.root) / ".cache" / "benchmarks" / f"{bench}-{key.hexdigest()[:12]}"
    set_dir = root / str(p.name)
    if not (set_dir / "set.yaml").exists():
        with locked(root.parent / f"{root.name}.lock"):
            if not (set_dir / "set.yaml").exists():  # another process may have imported it
                console.print(f"importing {bench} from {source} into {set_dir} (first use)")
                import_benchmark(bench, source, set_dir, limit=p.get("limit"), force=True)
    with open_dict(cfg):
        cfg.prompts.root = str(root)
