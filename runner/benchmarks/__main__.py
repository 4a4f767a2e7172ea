"""python -m runner.benchmarks import NAME --source SRC --out DIR [--split S] [--limit N]
[--subset N [--subset-seed S]]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.benchmarks.importers import CONVERTERS, PROTOCOL
from runner.errors import UserError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runner.benchmarks",
                                 description="Benchmarks as prompt sets (docs/evaluations.md).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="a benchmark's rows -> a prompt set folder")
    imp.add_argument("name", choices=list(CONVERTERS))
    imp.add_argument("--source", help="a dataset id (read with `datasets`), a local parquet "
                     "file or folder in the hub's layout, or a JSONL (default: the hub's id)")
    imp.add_argument("--out", type=Path, required=True, help="the set folder, e.g. prompts/mmmu")
    imp.add_argument("--split", help="default: the harness's split")
    imp.add_argument("--limit", type=int, help="the first N rows only")
    imp.add_argument("--subset", type=int, help="a seeded subset of N rows instead")
    imp.add_argument("--subset-seed", type=int, default=0, help="its seed (default 0)")
    imp.add_argument("--force", action="store_true", help="overwrite an existing set")
    imp.add_argument("--constrain", action="store_true",
                     help="mmmu: constrain multiple-choice answers to the option letters "
                     "(not the harness's protocol)")
    a = ap.parse_args(argv)
    from runner.benchmarks.build import import_benchmark

    try:
        proto = PROTOCOL[a.name]
        f, n = import_benchmark(a.name, a.source or proto.get("mirror") or proto["dataset"],
                                a.out, a.split, a.limit, a.force, a.constrain,
                                subset=(a.subset, a.subset_seed) if a.subset else None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{f}: {n} items; run it with prompts.name={a.out.name} prompts.root={a.out.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
