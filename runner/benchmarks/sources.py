"""Where a benchmark's rows come from: a Hugging Face dataset id (read with `datasets`, whose
cache and HF_HUB_OFFLINE it honours), a local parquet file or a folder in the hub's layout, or
a local JSONL. Image columns are read undecoded, so the original bytes reach the set."""

from __future__ import annotations

import base64
import binascii
import json
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
    """A folder in the hub's layout: <config>/<split>-*.parquet or data/<split>-*.parquet."""
    files = sorted(folder.rglob("*.parquet"))
    if config:
        scoped = [f for f in files if config in f.relative_to(folder).parts[:-1]]
        files = scoped or files
    named = [f for f in files if f.name.startswith(split)]
    return named or ([] if len(files) > 1 else files)


def rows(src: str, split: str, config: str | None = None, limit: int | None = None,
         sizes: dict[str, int] | None = None) -> Iterator[dict[str, Any]]:
    """The first `limit` rows of `src`'s split, each a dict; a JSONL row gets `_base`, the
    folder its relative image paths resolve against. `sizes["split_rows"]`: the split's rows."""
    p = Path(src)
    sizes = {} if sizes is None else sizes
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
        if not files or any(f.suffix != ".parquet" for f in files):
            raise UserError(f"--source {src}: no parquet file for split '{split}' (expected "
                            "a .parquet or .jsonl file, or a folder like data/"
                            f"{split}-00000-of-00001.parquet).")
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files],
                                   split="train")
    elif "/" in src and not src.startswith((".", "/")):
        try:
            ds = datasets.load_dataset(src, config, split=split)
        except Exception as e:  # offline, unknown id, no such split: one sentence, no trace
            raise UserError(f"--source {src}: cannot load it with `datasets` ({e}); "
                            "give a local parquet/JSONL or check the id, split and network "
                            "(HF_HUB_OFFLINE=1 reads the cache only).") from None
    else:
        raise UserError(f"--source {src}: no such file or folder, and not a dataset id.")
    ds = _undecoded(ds)
    sizes["split_rows"] = len(ds)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    yield from ds


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
