"""Where a benchmark's rows come from: a Hugging Face dataset id (read with `datasets`, whose
cache and HF_HUB_OFFLINE it honours), a local parquet file or a folder in the hub's layout, or
a local JSONL. Image columns are read undecoded, so the original bytes reach the set."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.errors import UserError


def _undecoded(ds: Any) -> Any:
    """Image columns as {bytes, path}: the original file, never a PIL re-encode."""
    from datasets import Image

    for name, feat in ds.features.items():
        if isinstance(feat, Image) and feat.decode:
            ds = ds.cast_column(name, Image(decode=False))
    return ds


def _parquet_files(folder: Path, split: str, config: str | None) -> list[Path]:
    """A folder in the hub's layout: data/<split>-*.parquet (a parquet repo), or
    <config>/<split>/NNNN.parquet (the hub's parquet conversion, `refs/convert/parquet`); a
    conversion's partial-<split>/ (the first ~5 GB of a bigger split) is refused."""
    files = sorted(f for f in folder.rglob("*.parquet")
                   if not any(x.startswith(".") for x in f.relative_to(folder).parts))
    if config:
        scoped = [f for f in files if config in f.relative_to(folder).parts[:-1]]
        files = scoped or files
    dirs = [f.relative_to(folder).parts[:-1] for f in files]
    if any(f"partial-{split}" in d for d in dirs) and not any(split in d for d in dirs):
        raise UserError(f"source {folder}: partial-{split}/ is the hub's partial conversion "
                        f"(the first ~5 GB of split '{split}', not the whole split); download "
                        "the whole split from a parquet repository of it instead (`hf download "
                        "REPO --repo-type dataset --include 'data/*' --local-dir DIR`).")
    named = [f for f, d in zip(files, dirs, strict=True)
             if f.name.startswith(split) or split in d]
    return named or ([] if len(files) > 1 else files)


def _script_error(src: str, script: str, mirror: str | None) -> UserError:
    """A loading-script dataset (datasets >= 4 runs none): one sentence with the commands that
    fix it."""
    import datasets

    repo = src if _hub_id(src) else "REPO"
    fix = (f"use its parquet mirror (prompts.source={mirror}) or " if mirror else "") + \
        (f"fetch the hub's parquet conversion with `hf download {repo} --repo-type dataset "
         "--revision refs/convert/parquet --local-dir DIR` and give DIR as the source")
    return UserError(f"source {src} is a loading-script dataset ({script}), which datasets "
                     f"{datasets.__version__} no longer runs: {fix}.")


def _hub_id(src: str) -> bool:
    return "/" in src and not src.startswith((".", "/")) and not Path(src).exists()


def _load(src: str, config: str | None, split: str, mirror: str | None) -> Any:
    """`datasets.load_dataset` of a hub id (or a local loading script, which it refuses as it
    refuses the hub's): any failure as one sentence."""
    import datasets

    try:
        return datasets.load_dataset(src, config, split=split)
    except RuntimeError as e:
        m = re.search(r"Dataset scripts are no longer supported, but found (\S+)", str(e))
        if m:
            raise _script_error(src, m.group(1), mirror) from None
        raise UserError(f"--source {src}: cannot load it with `datasets` ({e}).") from None
    except Exception as e:  # offline, unknown id, no such split: one sentence, no trace
        raise UserError(f"--source {src}: cannot load it with `datasets` ({e}); "
                        "give a local parquet/JSONL or check the id, split and network "
                        "(HF_HUB_OFFLINE=1 reads the cache only).") from None


def rows(src: str, split: str, config: str | None = None, limit: int | None = None,
         sizes: dict[str, int] | None = None, mirror: str | None = None,
         subset: tuple[int, int] | None = None) -> Iterator[dict[str, Any]]:
    """The first `limit` rows of `src`'s split, or its seeded `subset` (n, seed: `seeded`),
    each a dict; a JSONL row gets `_base`, the folder its relative image paths resolve
    against, a subset's row `_row`, its number in the split. `sizes["split_rows"]`: the
    split's rows. `mirror`: a parquet source of the same rows, named when `src` is a loading
    script."""
    p = Path(src)
    sizes = {} if sizes is None else sizes
    if subset is not None and p.suffix == ".jsonl" and p.is_file():
        every = list(rows(src, split, sizes=sizes))
        yield from (every[i] | {"_row": i} for i in seeded(len(every), *subset))
        return
    if p.suffix == ".jsonl" and p.is_file():
        with open(p, encoding="utf-8") as fh:
            n = 0
            for k, line in enumerate(fh, 1):
                if limit is not None and n >= limit:  # the rest only counted
                    sizes["split_rows"] = n + sum(1 for x in fh if x.strip()) + bool(line.strip())
                    return
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except ValueError as e:
                        raise UserError(f"{p} line {k}: not valid JSON ({e}).") from None
                    rec["_base"] = str(p.parent)
                    n += 1
                    yield rec
        sizes["split_rows"] = n
        return
    import datasets

    if p.exists():
        files = [p] if p.is_file() else _parquet_files(p, split, config)
        if not files and p.is_dir() and (p / f"{p.name}.py").is_file():
            _load(src, config, split, mirror)  # a loading script: datasets refuses it
        if not files or any(f.suffix != ".parquet" for f in files):
            raise UserError(f"--source {src}: no parquet file for split '{split}' (expected "
                            "a .parquet or .jsonl file, or a folder like data/"
                            f"{split}-00000-of-00001.parquet or <config>/{split}/0000.parquet)"
                            ".")
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files],
                                   split="train")
    elif _hub_id(src):
        ds = _load(src, config, split, mirror)
    else:
        raise UserError(f"--source {src}: no such file or folder, and not a dataset id.")
    ds = _undecoded(ds)
    sizes["split_rows"] = len(ds)
    if subset is not None:  # each row with its number in the split (ids made from it)
        picked = seeded(len(ds), *subset)
        yield from (r | {"_row": i} for i, r in zip(picked, ds.select(picked), strict=True))
        return
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    yield from ds


def seeded(total: int, n: int, seed: int) -> list[int]:
    """A seeded subset of `total` rows: the `n` row numbers whose SHA-256 of "<seed>/<row>" is
    smallest, in the source's order. Plain arithmetic (no RNG whose algorithm could change),
    and a larger n keeps every row of a smaller one under the same seed."""
    rank = sorted(range(total), key=lambda i: hashlib.sha256(f"{seed}/{i}".encode()).digest())
    return sorted(rank[:n])


def image_bytes(value: Any, base: Path, where: str) -> bytes:
    """{bytes, path} (as `datasets` gives undecoded images), bytes, a path relative to the
    source's folder, base64 or a data: URL."""
    if isinstance(value, dict):
        b = value.get("bytes")
        value = (bytes(b) if isinstance(b, list) else b) if b else value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise UserError(f"{where}: no image (got {type(value).__name__}).")
    if len(value) < 1024:
        f = Path(value) if Path(value).is_absolute() else base / value
        if f.is_file():
            return f.read_bytes()
    try:
        return base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value,
                                validate=True)
    except (binascii.Error, ValueError, IndexError):
        raise UserError(f"{where}: {value[:60]!r} is neither an image file nor base64.") from None
