"""Write an imported benchmark as a prompt set: <out>/set.yaml (name, metrics as `scorer`, the
harness's sampling as the set's `sampling:`) + <out>/items.jsonl + <out>/images/ +
<out>/imported.json (where it came from). Built in a folder beside <out> and put in place in
one step, the stamp written last: a failed or killed import leaves no set behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

import yaml

from runner.benchmarks.importers import CONVERTERS, PROTOCOL, Images
from runner.benchmarks.sources import rows
from runner.errors import UserError
from runner.files import atomic_write

CODE = [Path(__file__).with_name(f) for f in ("build.py", "importers.py", "sources.py")]


def importer_code() -> str:
    """Digest of the code that turns rows into items: a fix in an importer imports again."""
    h = hashlib.sha256()
    for f in CODE:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def import_benchmark(name: str, source: str, out: Path, split: str | None = None,
                     limit: int | None = None, force: bool = False,
                     constrain: bool = False, stamp: dict[str, Any] | None = None,
                     subset: tuple[int, int] | None = None) -> tuple[Path, int]:
    """Import `name` from `source` into the set folder `out`; (set file, item count).
    `stamp`: more to record in imported.json (the preset's key and source identity);
    `subset`: (n, seed), a seeded subset of the split's rows (sources.seeded) instead of all."""
    if name not in CONVERTERS:
        raise UserError(f"unknown benchmark '{name}'; one of {', '.join(CONVERTERS)}.")
    out = Path(out)
    if (out / "set.yaml").exists() and not force:
        raise UserError(f"{out / 'set.yaml'} exists; pick another --out or pass --force.")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        count = _build(name, source, tmp, out.name, split, limit, constrain, stamp or {},
                       subset)
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():  # --force over an existing set: aside, then the new one in place
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "set.yaml", count


def _build(name: str, source: str, out: Path, set_name: str, split: str | None,
           limit: int | None, constrain: bool, stamp: dict[str, Any],
           subset: tuple[int, int] | None) -> int:
    proto = PROTOCOL[name]
    set_file = out / "set.yaml"
    split = split or proto["split"]
    img = Images(out)
    convert = CONVERTERS[name]
    count, ids, sizes = 0, set(), {}
    read = 0

    def write(fh: IO[bytes]) -> None:
        nonlocal count, read
        for n, row in enumerate(rows(source, split, proto.get("config"), limit, sizes,
                                     proto.get("mirror"), subset)):
            read = n + 1
            row_no = row.pop("_row", n)  # a subset's row: its number in the split (ids)
            for item in convert(row, row_no, img, constrain=constrain):
                if item["id"] in ids:
                    raise UserError(f"{source}: duplicate id '{item['id']}'; ids must be unique.")
                ids.add(item["id"])
                fh.write((json.dumps(item, ensure_ascii=False) + "\n").encode())
                count += 1

    atomic_write(out / "items.jsonl", write)
    if not count:
        raise UserError(f"{source}: no rows in split '{split}'.")
    src = proto["source"]
    picked = (f", a seeded subset of {read} of its {sizes.get('split_rows')} rows (seed "
              f"{subset[1]})" if subset else f", first {limit} rows" if limit else "")
    doc: dict[str, Any] = {
        "name": set_name,
        "description": f"{name} ({proto['dataset']}) imported from {source}, split {split}"
                       f"{picked}; requests, sampling and "
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
    # last: where the items came from (the run's manifest carries it: docs/evaluations.md)
    origin = {"benchmark": name, "source": source, "split": split,
              "split_rows": sizes.get("split_rows"), "rows_planned": read, "items": count,
              "limit": limit, "protocol": {"harness": "runner/benchmarks/harness.yaml", **src},
              "importer": importer_code(), **stamp}
    if subset:  # which rows: the rule and its inputs (sources.seeded), beside the view's ids
        origin["selection"] = {"rule": "seeded", "n": subset[0], "seed": subset[1]}
    atomic_write(out / "imported.json", json.dumps(origin, indent=2, sort_keys=True) + "\n")
    return count
