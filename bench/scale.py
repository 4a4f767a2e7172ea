"""Any size of set: memory, time to the first stored result and wall time as the set grows,
and cache hits on large sets.

    .venv/bin/python bench/scale.py [--sizes 500,2000,8000] [--cache 10000,100000]
                                    [--chat 2000] [--all-at-once 8000]

On the tiny Pixtral on CPU, distinct 256x192 JPEGs, sampling.max_tokens=1:
  1. for each size: peak RSS of the runner's process tree (runner + engine core + worker),
     the time to the first stored result from the start and from the engine being ready
     (the run's manifest.json appearing: engine up and plan done), and
     the wall time (`python -m runner`, each in a fresh process);
  2. --all-at-once N: the same N images with every request queued at once
     (engine.max_in_flight larger than the set), as before the bounded window: wall ratio;
  3. --chat N: the runner against raw vLLM (`LLM.chat` on all items at once,
     bench/raw_vllm.py) on the same N images: wall ratio;
  4. --cache N,...: a cache-hit rerun of a finished run of N distinct 64x48 PNGs (the first run
     on the fake engine, RUNNER_ENGINE=fake: a cache hit never touches the engine), best of 3;
  5. --first N: a first run of N images against max(plan, engine start) + generation + 2 s,
     the plan timed on its own first (a fresh process and cache, as the run plans it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
TINY = ["model=pixtral_tiny", "engine=cpu", "sampling.max_tokens=1"]


def make_set(d: Path, n: int, size: tuple[int, int], fmt: str) -> Path:
    """n distinct images (one base image, shifted) and a JSONL set of one item each."""
    (d / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), "RGB")
    base = np.asarray(small.resize(size, Image.Resampling.BICUBIC))
    lines = []
    for i in range(n):
        name = f"im{i:06d}.{fmt}"
        a = np.roll(base, i, axis=1)
        a[0, 0] = (i % 256, i // 256 % 256, i // 65536 % 256)  # distinct bytes, always
        Image.fromarray(a, "RGB").save(d / "images" / name, quality=85) if fmt == "jpg" else \
            Image.fromarray(a, "RGB").save(d / "images" / name, compress_level=1)
        lines.append(json.dumps({"id": f"i{i:06d}", "text": "Describe this image.",
                                 "images": [f"images/{name}"]}))
    f = d / "set.jsonl"
    f.write_text("\n".join(lines) + "\n")
    os.utime(d, None)
    return f


def tree_rss(pid: int) -> int:
    """Resident bytes of the process and all its descendants."""
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    total, todo = 0, [pid]
    while todo:
        q = todo.pop()
        todo += kids.get(q, [])
        try:
            for line in Path(f"/proc/{q}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def run(args: list[str], store: Path, env: dict | None = None) -> dict:
    """`python -m runner ARGS`: wall, peak tree RSS, first stored result (s after start)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([PY, "-m", "runner", *args, f"store.root={store}"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, **(env or {})})
    peak, first, ready = 0, None, None
    while p.poll() is None:
        peak = max(peak, tree_rss(p.pid))
        if ready is None and any(store.glob("*/manifest.json")):  # written once the engine
            ready = time.perf_counter() - t0  # is up and the plan done: feeding starts
        if first is None and any(f.stat().st_size for f in store.glob("*/results.jsonl")):
            first = time.perf_counter() - t0
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    err = p.stderr.read() if p.stderr else ""
    if p.returncode:
        raise SystemExit(f"runner failed ({p.returncode}): {err[-2000:]}")
    ms = [json.loads(f.read_text()) for f in store.glob("*/manifest.json")]
    start = ms[0]["timings"]["engine_start_s"] if ms else 0.0
    t = ms[0]["timings"] if ms else {}
    return {"wall_s": wall, "peak_rss_gb": peak / 1e9, "first_result_s": first,
            "first_after_ready_s": None if first is None or ready is None else first - ready,
            "engine_start_s": start, "generate_s": t.get("generate_s", 0),
            "job_s": t.get("total_s", 0)}  # the job's own time: no interpreter start or exit


PLAN = """import sys, time
from pathlib import Path
from runner.plan.load import load_set
t = time.perf_counter()
load_set(sys.argv[1], cache=Path(sys.argv[2]), show=False)
print(time.perf_counter() - t)"""


def first_run(t: Path, n: int) -> dict:
    """Plan time alone (cold caches), then the first run on a fresh store."""
    f = make_set(t / f"f{n}", n, (256, 192), "jpg")
    plan = float(subprocess.run([PY, "-c", PLAN, str(f), str(t / f"plan{n}")], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout)
    r = run([*TINY, f"prompts.name={f}"], t / f"first{n}")
    bound = max(plan, r["engine_start_s"]) + r["generate_s"] + 2
    print(f"first run, {n} images: plan {plan:.1f} s (alone), engine start "
          f"{r['engine_start_s']:.1f} s, generation {r['generate_s']:.1f} s, wall "
          f"{r['wall_s']:.1f} s (the job itself {r['job_s']:.1f} s; the rest is the "
          f"interpreter's start and the engine's shutdown at exit); max(plan, start) + "
          f"generation + 2 = {bound:.1f} s "
          f"({'met' if r['wall_s'] <= bound else 'NOT met'}); load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    # a first report: it makes the thumbnails (store.thumbnails is off by default)
    store = t / f"first{n}"
    h = next(store.glob("*/manifest.json")).parent.name
    t0 = time.perf_counter()
    subprocess.run([PY, "-m", "runner.results", "--root", str(store), "report", h, "--out",
                    str(t / f"report{n}")], cwd=ROOT, capture_output=True, check=True)
    rep = time.perf_counter() - t0
    print(f"results report right after that run: {rep:.1f} s", flush=True)
    return {"n": n, "plan_s": plan, "bound_s": bound, "report_s": rep, **r}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="500,2000,8000")
    ap.add_argument("--all-at-once", type=int, default=8000)
    ap.add_argument("--chat", type=int, default=2000)
    ap.add_argument("--cache", default="10000,100000")
    ap.add_argument("--first", type=int, default=10000)
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides for every run, e.g. "
                    "engine.extra.mm_processor_cache_gb=4 (vLLM's default; engine=cpu sets 0), "
                    "or engine.max_num_seqs=1024 (vLLM's offline default on an H100: the "
                    "first result after a window of 2,048 preprocessings)")
    a = ap.parse_args()
    TINY.extend(a.extra)
    out: dict = {"scale": {}, "cache_hit_s": {}, "load_before": os.getloadavg()}
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "data") as tmp:
        t = Path(tmp)
        for n in [int(x) for x in a.sizes.split(",") if x]:
            f = make_set(t / f"s{n}", n, (256, 192), "jpg")
            r = run([*TINY, f"prompts.name={f}"], t / f"out{n}")
            out["scale"][n] = r
            print(f"{n:>6} images: peak RSS {r['peak_rss_gb']:.2f} GB · first result "
                  f"{r['first_result_s']:.1f} s, {r['first_after_ready_s']:.1f} s after "
                  f"the engine was ready (goal <= 10 s; engine start "
                  f"{r['engine_start_s']:.1f} s) · wall {r['wall_s']:.1f} s", flush=True)
        sizes = sorted(out["scale"])
        if len(sizes) > 1:
            lo, hi = out["scale"][sizes[0]], out["scale"][sizes[-1]]
            print(f"peak RSS {sizes[-1]} / {sizes[0]}: "
                  f"{hi['peak_rss_gb'] / lo['peak_rss_gb']:.3f} (target <= 1.10)")
        if a.all_at_once:
            n = a.all_at_once
            f = t / f"s{n}" / "set.jsonl"
            if not f.exists():
                f = make_set(t / f"s{n}", n, (256, 192), "jpg")
            windowed = out["scale"].get(n) or run([*TINY, f"prompts.name={f}"], t / "w")
            r = run([*TINY, f"prompts.name={f}", f"engine.max_in_flight={n * 10}"], t / "aao")
            out["all_at_once"] = {"n": n, "windowed": windowed, "all_at_once": r}
            print(f"all at once, {n} images: peak RSS {r['peak_rss_gb']:.2f} GB · first result "
                  f"{r['first_result_s']:.1f} s · wall {r['wall_s']:.1f} s; windowed / all at "
                  f"once wall: {windowed['wall_s'] / r['wall_s']:.3f} (target <= 1.02)",
                  flush=True)
        if a.chat:
            n = a.chat
            f = t / f"s{n}" / "set.jsonl"
            if not f.exists():
                f = make_set(t / f"s{n}", n, (256, 192), "jpg")
            t0 = time.perf_counter()
            raw = subprocess.run([PY, str(ROOT / "bench" / "raw_vllm.py"), *TINY,
                                  f"prompts.name={f}"], cwd=ROOT, capture_output=True,
                                 text=True, check=True)
            raw_wall = time.perf_counter() - t0
            r = json.loads([x for x in raw.stdout.splitlines() if x.startswith("{")][-1])
            mine = run([*TINY, f"prompts.name={f}"], t / "c")  # right after: the same load
            out["chat"] = {"n": n, "runner": mine, "raw_wall_s": raw_wall, "raw": r}
            print(f"llm.chat(all) on {n} images: wall {raw_wall:.1f} s (start "
                  f"{r['start_s']:.1f} s, generation {r['generate_s']:.1f} s); runner right "
                  f"after: wall {mine['wall_s']:.1f} s (start {mine['engine_start_s']:.1f} s, "
                  f"generation {mine['generate_s']:.1f} s); runner / raw: wall "
                  f"{mine['wall_s'] / raw_wall:.3f}, generation "
                  f"{mine['generate_s'] / r['generate_s']:.3f}", flush=True)
        for n in [int(x) for x in a.cache.split(",") if x]:
            f = make_set(t / f"c{n}", n, (64, 48), "png")
            store = t / f"cache{n}"
            first = run([*TINY, f"prompts.name={f}"], store, env={"RUNNER_ENGINE": "fake"})
            best = min(run([*TINY, f"prompts.name={f}"], store)["wall_s"] for _ in range(3))
            out["cache_hit_s"][n] = best
            print(f"cache hit, {n} images: {best:.2f} s (best of 3; the first run took "
                  f"{first['wall_s']:.1f} s)", flush=True)
        if a.first:
            out["first"] = first_run(t, a.first)
    out["load_after"] = os.getloadavg()
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
