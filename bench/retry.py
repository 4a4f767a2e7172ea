"""The cost of `retry_errors` on a big run: a results.jsonl of N records (1 in 33 an
engine_death error), then what a retry does before its engine runs: read the stored records,
select the ones to retry, move them to errors.history.jsonl and rewrite results.jsonl.

    PYTHONPATH=. .venv/bin/python bench/retry.py [--n 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fakes  # noqa: E402
from runner.job import retry  # noqa: E402
from runner.store.record import read_records  # noqa: E402
from runner.store.rundir import RunDir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    n = ap.parse_args().n
    root = Path(tempfile.mkdtemp())
    try:
        died = "the engine died while generating this item: x"
        recs = [fakes.record(f"i{i:06d}", error=died, error_kind="engine_death") if i % 33 == 0
                else fakes.record(f"i{i:06d}", "word " * 40) for i in range(n)]
        fakes.write_run(root, "b" * 16, recs)
        rd = RunDir(root, "b" * 16)
        size = rd.results.stat().st_size
        t = time.perf_counter()
        stored = read_records(rd.path)
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        keys = retry.retryable(rd, stored, {"engine_death"})
        t_select = time.perf_counter() - t
        t = time.perf_counter()
        retry.retire(rd, {k: stored[k] for k in keys})
        t_retire = time.perf_counter() - t
        print(f"{n:,} records ({size / 1e6:.1f} MB), {len(keys):,} errors to retry: "
              f"read {t_read:.2f} s · select {t_select:.3f} s · move + rewrite {t_retire:.2f} s")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
