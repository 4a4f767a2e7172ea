"""The same 2-shard job on the tiny model, four ways: through Ray (hydra/launcher=ray, a local
Ray started by the run), through submitit's local executor (hydra/launcher=local), as one
process (the unsharded run), and both shards in one process (Hydra's basic launcher, the
engine reused).

    .venv/bin/python bench/scale_out.py [--n 64] [--max-tokens 32]

Each way runs once, in a fresh store, as a fresh `python -m runner`. Prints the wall time of
each (what the user waits for: Ray's or submitit's start, the engines' starts, generation) and,
from the manifest, each shard's engine start and generation time; `load` is the 1-minute load
average when the way ended (anything else running on the machine shows there).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench import PY, make_set, timed

SHARDS = ["shard.count=2", "shard.index=0,1"]
WAYS = {"ray (2 Ray tasks)": ["-m", "hydra/launcher=ray", *SHARDS],
        "submitit local (2 processes)": ["-m", "hydra/launcher=local", *SHARDS],
        "one process, unsharded": [],
        "one process, 2 shards in turn": ["-m", *SHARDS]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scale_out"))
    prompts = make_set(tmp / "set", a.n)
    common = ["model=pixtral_tiny", "engine=cpu", f"prompts.name={prompts}",
              f"sampling.max_tokens={a.max_tokens}"]
    print(f"{a.n} items, max_tokens {a.max_tokens}, tiny Pixtral on CPU; {tmp}")
    print(f"{'way':32} {'wall s':>7} {'load':>5}  per job: engine start s / generate s")
    for i, (name, args) in enumerate(WAYS.items()):
        store = tmp / f"store{i}"
        wall, _ = timed([PY, "-m", "runner", *args, *common, f"store.root={store}"])
        (m,) = [json.loads(f.read_text()) for f in store.glob("*/manifest.json")]
        assert m["status"] == "complete" and m["counts"]["stored"] == a.n, m
        jobs = m.get("shards", {"0/1": m})
        per = "  ".join(f"{k}: {v['timings']['engine_start_s']:.1f} / "
                        f"{v['timings']['generate_s']:.1f}" for k, v in sorted(jobs.items()))
        load = os.getloadavg()[0]  # other work on the machine skews the comparison
        print(f"{name:32} {wall:7.1f} {load:5.1f}  {per}", flush=True)


if __name__ == "__main__":
    main()
