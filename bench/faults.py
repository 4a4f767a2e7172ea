"""A dying engine on a long run: the same N-image run undisturbed, then with the vLLM
EngineCore killed (SIGKILL) once K items are stored.

    .venv/bin/python bench/faults.py [--n 1000] [--kill-at 54] [--max-tokens 64]

Prints the detection delay (SIGKILL to the runner noticing), the restart cost (the new
engine's start), the wall time of both runs and their ratio, and the longest wait for an engine
step in the undisturbed run (what engine.stall_timeout_s must stay above).
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
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_faults import engine_cores  # noqa: E402

from bench import PY, ROOT, make_set, manifests  # noqa: E402


def stored(store: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in store.glob("*/results*.jsonl"))


def run(args: list[str], store: Path, kill_at: int | None) -> tuple[float, float | None]:
    """Wall time of one invocation, and when (epoch s) the engine core was killed."""
    t = time.perf_counter()
    p = subprocess.Popen([PY, "-m", "runner", *args, f"store.root={store}"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    killed = None
    if kill_at is not None:
        while stored(store) < kill_at:
            if p.poll() is not None:
                sys.exit("the run ended before the kill point")
            time.sleep(0.02)
        (core,) = engine_cores(p.pid)
        os.kill(core, signal.SIGKILL)
        killed = time.time()
    if p.wait() != 0:
        sys.exit(f"runner failed ({p.returncode}); see its engine log under {store}")
    return time.perf_counter() - t, killed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--kill-at", type=int, default=54)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    sf = make_set(tmp / "set", a.n)
    args = ["model=pixtral_tiny", "engine=cpu", f"sampling.max_tokens={a.max_tokens}",
            f"prompts.name={sf}"]
    calm_s, _ = run(args, tmp / "calm", None)
    (calm,) = manifests(tmp / "calm")
    hurt_s, killed = run(args, tmp / "hurt", a.kill_at)
    (hurt,) = manifests(tmp / "hurt")
    (r,) = hurt["restarts"]
    noticed = datetime.fromisoformat(r["time"]).timestamp()
    res = {"n": a.n, "kill_at": a.kill_at, "detection_s": round(noticed - killed, 3),
           "restart_start_s": r["start_s"], "undisturbed_wall_s": round(calm_s, 1),
           "killed_wall_s": round(hurt_s, 1), "wall_ratio": round(hurt_s / calm_s, 3),
           "first_start_s": hurt["timings"]["engine_start_s"],
           "max_gap_s_undisturbed": calm["timings"]["max_gap_s"],
           "stored": [calm["counts"]["stored"], hurt["counts"]["stored"]], "reason": r["reason"]}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
