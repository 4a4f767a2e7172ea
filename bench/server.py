"""A warm server against in-process engines (docs/server.md).

    .venv/bin/python bench/server.py [--n 1000] [--max-tokens 16] [--warm-runs 3]

1. `python -m runner.serve model=pixtral_tiny engine=cpu` on a fresh store, then the 5-item
   sample set against it, `--warm-runs` times (each a new config: sampling.seed=i, so nothing
   is cached), each as a fresh `python -m runner ... engine=server`: wall time per run.
2. N image prompts through that server, then (server stopped) the same N in process: wall
   times, their ratio, and the generation times from the manifests.
Prints JSON; the load average is read at each step (2 shared cores here).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import PY, ROOT, make_set, manifests, timed  # noqa: E402

TINY = ["model=pixtral_tiny"]


def load() -> float:
    return os.getloadavg()[0]


def start_server(store: Path) -> tuple[subprocess.Popen, float]:
    t = time.perf_counter()
    p = subprocess.Popen([PY, "-m", "runner.serve", *TINY, "engine=cpu", f"store.root={store}"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    state = store / ".serve" / "state.json"
    while not state.exists():  # written once the server answers
        if p.poll() is not None:
            sys.exit(f"runner.serve failed; see {store}/.serve/server.log")
        time.sleep(0.1)
    return p, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--warm-runs", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    sf = make_set(tmp / "set", a.n)
    srv = tmp / "served"
    res: dict = {"n": a.n, "max_tokens": a.max_tokens}
    p, res["server_start_s"] = start_server(srv)
    try:
        warm = []
        for i in range(1, a.warm_runs + 1):
            wall, _ = timed([PY, "-m", "runner", *TINY, "engine=server", f"store.root={srv}",
                             f"sampling.seed={i}"])
            warm.append({"wall_s": round(wall, 2), "load": round(load(), 1)})
        res["warm_sample_runs"] = warm
        big = [*TINY, f"sampling.max_tokens={a.max_tokens}", f"prompts.name={sf}"]
        wall, _ = timed([PY, "-m", "runner", *big, "engine=server", f"store.root={srv}"])
        m = [x for x in manifests(srv) if x["counts"]["planned"] == a.n][0]
        res["server"] = {"wall_s": round(wall, 1), "generate_s": m["timings"]["generate_s"],
                         "load": round(load(), 1), "stored": m["counts"]["stored"]}
    finally:
        os.killpg(p.pid, signal.SIGINT)
        p.wait()
    wall, _ = timed([PY, "-m", "runner", *big, "engine=cpu", f"store.root={tmp / 'inproc'}"])
    (m,) = manifests(tmp / "inproc")
    res["in_process"] = {"wall_s": round(wall, 1), "generate_s": m["timings"]["generate_s"],
                         "engine_start_s": m["timings"]["engine_start_s"],
                         "load": round(load(), 1), "stored": m["counts"]["stored"]}
    s, i = res["server"], res["in_process"]
    res["wall_ratio_server_over_in_process"] = round(s["wall_s"] / i["wall_s"], 3)
    res["generate_ratio_server_over_in_process"] = round(s["generate_s"] / i["generate_s"], 3)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
