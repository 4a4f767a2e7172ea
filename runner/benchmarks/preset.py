"""`prompts=mmmu` (conf/prompts/<bench>.yaml): a benchmark preset, imported on first use into
the store's cache, then planned like any set.

Each import is addressed by what produces it (as the store addresses runs): the benchmark,
its protocol entry in harness.yaml, the importer's code, the source (a local file's content,
or a hub id with its resolved revision), `prompts.limit` and, when set, the seeded subset
(`prompts.subset.<bench>`, `prompts.subset_seed`). It lives in
<store.root>/.cache/benchmarks/<key>/<name>/ and is never changed once there, so a run's
recorded set file stays what produced it, and two configs importing other versions at once
never see each other's. `limit`: the first rows (the source's order); `subset`: a seeded
sample of the whole split (sources.seeded), which the card marks as a subset."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from runner.benchmarks.build import import_benchmark, importer_code
from runner.benchmarks.importers import PROTOCOL
from runner.config import BENCHMARK_CACHE
from runner.console import console
from runner.errors import UserError
from runner.files import atomic_write, locked, read_json

KEY_LEN = 16


def _sha256(f: Path, memo: dict[str, Any]) -> str:
    """A file's SHA-256, remembered by (path, size, mtime): a big parquet is read once."""
    st = f.stat()
    k = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if k not in memo:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        memo[k] = h.hexdigest()
    return memo[k]


def _revision(repo: str) -> str | None:
    """The hub dataset's commit: asked of the hub unless offline, else the local cache's."""
    try:
        from huggingface_hub import HfApi, constants

        if not constants.HF_HUB_OFFLINE:
            return HfApi().dataset_info(repo, timeout=10).sha
    except Exception:  # noqa: BLE001 - offline or unreachable: the cache's, if any
        pass
    try:
        from huggingface_hub import constants

        ref = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}"
        return (ref / "refs" / "main").read_text().strip() or None
    except Exception:  # noqa: BLE001
        return None


def source_id(source: str, cache: Path) -> dict[str, Any]:
    """What the source is: a local file or folder by content, a hub id by revision."""
    p = Path(source)
    if not p.exists():
        return {"hub": source, "revision": _revision(source)}
    memo_file = cache / ".sha256.json"
    memo = read_json(memo_file, {})
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    digests = {str(f.relative_to(p) if f != p else f.name): _sha256(f, memo) for f in files}
    atomic_write(memo_file, json.dumps(memo))
    whole = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    return {"path": str(p.resolve()), "sha256": whole if len(files) != 1 else
            next(iter(digests.values())), "files": len(files)}


def cache_root(store_root: str) -> Path:
    """Where every benchmark's imports live (each in a folder of its key): the folder the
    engine reads their images from."""
    return Path(store_root) / BENCHMARK_CACHE


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """Import `prompts.benchmark` if this import is not in the cache yet; point `prompts.root`
    at it. Returns where its items came from (the run's view records it); {} for
    ordinary sets."""
    p = cfg.prompts
    bench = p.get("benchmark")
    if not bench:
        return {}
    if bench not in PROTOCOL:
        raise UserError(f"prompts.benchmark={bench} is not one of {', '.join(PROTOCOL)}.")
    source = p.get("source") or PROTOCOL[bench].get("mirror") or PROTOCOL[bench]["dataset"]
    subset = _subset(p, bench)
    # a folder of several benchmarks' sources, by name (NAME/, NAME.parquet or NAME.jsonl):
    # one `prompts.source` serves a multirun over them
    named = [Path(source) / f"{bench}{ext}" for ext in ("", ".parquet", ".jsonl")]
    if Path(source).is_dir() and (hit := next((n for n in named if n.exists()), None)):
        source = str(hit)
    cache = cache_root(cfg.store.root)
    cache.mkdir(parents=True, exist_ok=True)
    with locked(cache / f".{bench}.lock"):  # one importer of a benchmark at a time
        ident = source_id(source, cache)
        parts = [bench, PROTOCOL[bench], importer_code(), ident, p.get("limit")]
        if subset:  # only when set: the whole split's keys stay as they were
            parts.append({"subset": subset[0], "seed": subset[1]})
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:KEY_LEN]
        set_dir = cache / key / str(p.name)
        stamp = read_json(set_dir / "imported.json", {})
        if stamp.get("key") != key:
            for stale in (cache / key).glob(".*.tmp"):  # a killed import's leftovers
                shutil.rmtree(stale, ignore_errors=True)
            console.print(f"importing {bench} from {source} into {set_dir}")
            import_benchmark(bench, source, set_dir, limit=p.get("limit"), force=True,
                             stamp={"key": key, "source_id": ident}, subset=subset)
            stamp = read_json(set_dir / "imported.json", {})
    with open_dict(cfg):
        cfg.prompts.root = str(cache / key)
    return {k: stamp.get(k) for k in ("benchmark", "source", "source_id", "split",
                                      "split_rows", "rows_planned", "protocol", "importer",
                                      "key", "selection")}


def _subset(p: DictConfig, bench: str) -> tuple[int, int] | None:
    """`prompts.subset.<bench>` (n) with `prompts.subset_seed`, checked: None for the whole
    split."""
    n = (p.get("subset") or {}).get(bench)
    if n is None:
        return None
    if n < 1:
        raise UserError(f"prompts.subset.{bench}={n}: give a number of rows (1 or more), or "
                        "null for the whole split.")
    if p.get("limit") is not None:
        raise UserError(f"prompts.subset.{bench}={n} and prompts.limit={p.limit} both set: "
                        "choose one (subset: a seeded sample of the split; limit: its first "
                        "rows).")
    return n, int(p.get("subset_seed") or 0)


def selection(origin: dict[str, Any]) -> str | None:
    """Which of the split's rows an import holds, in words (the dry run shows it): the whole
    split, its first rows (prompts.limit) or a seeded subset; None for an ordinary set."""
    rows, planned = origin.get("split_rows"), origin.get("rows_planned")
    if rows is None or planned is None:
        return None
    sel = origin.get("selection") or {}
    if sel.get("rule") == "seeded":
        return f"seeded subset {planned:,} of {rows:,} (seed {sel['seed']})"
    return f"whole split ({rows:,})" if planned >= rows else f"first {planned:,} of {rows:,}"
