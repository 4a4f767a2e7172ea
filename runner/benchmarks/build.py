"""Write an imported benchmark as a prompt set: <out>/set.yaml (name, metrics as `scorer`, the
harness's sampling as the set's `sampling:`) + <out>/items.jsonl + <out>/images/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import yaml

from runner.benchmarks.importers import CONVERTERS, PROTOCOL, Images
from runner.benchmarks.sources import rows
from runner.errors import UserError
from runner.files import atomic_write


def import_benchmark(name: str, source: str, out: Path, split: str | None = None,
                     limit: int | None = None, force: bool = False,
                     constrain: bool = False) -> tuple[Path, int]:
    """Import `name` from `source` into the set folder `out`; (set file, item count)."""
    if name not in CONVERTERS:
        raise UserError(f"unknown benchmark '{name}'; one of {', '.join(CONVERTERS)}.")
    proto = PROTOCOL[name]
    out = Path(out)
    set_file = out / "set.yaml"
    if set_file.exists() and not force:
        raise UserError(f"{set_file} exists; pick another --out or pass --force.")
    split = split or proto["split"]
    img = Images(out)
    convert = CONVERTERS[name]
    count, ids = 0, set()

    def write(fh: IO[bytes]) -> None:
        nonlocal count
        for n, row in enumerate(rows(source, split, proto.get("config"), limit)):
            for item in convert(row, n, img, constrain=constrain):
                if item["id"] in ids:
                    raise UserError(f"{source}: duplicate id '{item['id']}'; ids must be unique.")
                ids.add(item["id"])
                fh.write((json.dumps(item, ensure_ascii=False) + "\n").encode())
                count += 1

    atomic_write(out / "items.jsonl", write)
    if not count:
        raise UserError(f"{source}: no rows in split '{split}'.")
    src = proto["source"]
    doc: dict[str, Any] = {
        "name": out.name,
        "description": f"{name} ({proto['dataset']}) imported from {source}, split {split}"
                       f"{f', first {limit} rows' if limit else ''}; requests, sampling and "
                       f"metrics as {src['repo']} {src['path']}@{src['commit'][:12]} builds "
                       "them.",
        "format": "jsonl",
        "file": "items.jsonl",
        "sampling": dict(proto["sampling"]),
    }
    if proto["metrics"]:
        doc["scorer"] = list(proto["metrics"])
    atomic_write(set_file, f"# Imported by `python -m runner.benchmarks import {name}`.\n"
                 + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000))
    return set_file, count
