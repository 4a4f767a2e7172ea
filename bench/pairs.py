"""The runner against a seed-style script (bench/seed_script.py), as pairs: A B A B.

    .venv/bin/python bench/pairs.py [--n 1000] [--max-tokens 8] [--pairs 5] [--label after]

Each run is a fresh process (the runner on a fresh store); per run: wall, CPU (user + sys of
the whole process tree, sampled from /proc) and peak RSS of the largest process (VmHWM).
Prints, per metric, the medians
and the median, min and max of the per-pair ratio runner / script, checks that both produced
the same texts, and appends the result to bench/results/pairs.jsonl with the load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import make_set  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
METRICS = ("wall_s", "cpu_s", "rss_mib")


TICK = os.sysconf("SC_CLK_TCK")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def measured(cmd: list[str]) -> dict:
    """Wall; CPU: user + sys of every process of the tree, as last seen (sampled every
    0.1 s: a process is followed after its parent exits; one living < 0.1 s is missed);
    peak RSS: the largest VmHWM of any of them."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[int, tuple[float, int]] = {}  # pid -> (cpu s, VmHWM KiB)
    err = bytearray()
    os.set_blocking(p.stderr.fileno(), False)  # type: ignore[union-attr]

    def sample() -> None:
        kids, todo = _children(), [p.pid, *seen]
        while todo:
            q = todo.pop()
            try:
                st = Path(f"/proc/{q}/stat").read_text().rsplit(")", 1)[1].split()
                hwm = next(int(x.split()[1]) for x in
                           Path(f"/proc/{q}/status").read_text().splitlines()
                           if x.startswith("VmHWM:"))
            except (OSError, StopIteration, IndexError):
                continue
            if st[0] == "Z":
                continue
            new = q not in seen
            seen[q] = ((int(st[11]) + int(st[12])) / TICK, max(hwm, seen.get(q, (0, 0))[1]))
            if new or q == p.pid:
                todo += [k for k in kids.get(q, []) if k not in seen]

    while True:
        sample()
        err += p.stderr.read() or b""  # type: ignore[union-attr]
        if p.poll() is not None and not any(Path(f"/proc/{q}").exists() for q in seen
                                            if q != p.pid):
            break
        time.sleep(0.1)
    wall = time.perf_counter() - t
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err.decode()[-3000:]}")
    return {"wall_s": wall, "cpu_s": sum(c for c, _ in seen.values()),
            "main_cpu_s": seen[p.pid][0],  # the command's own process (the engine core apart)
            "rss_mib": max(h for _, h in seen.values()) / 1024}


def texts_of_store(store: Path) -> dict[str, str]:
    out = {}
    for f in store.glob("*/results.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out[r["id"]] = r["output"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pairs-"))
    f = make_set(tmp / "set", a.n, (256, 192), "jpg")
    base = ["model=pixtral_tiny", "engine=cpu", f"sampling.max_tokens={a.max_tokens}"]
    load0 = Path("/proc/loadavg").read_text().strip()
    rows: list[dict] = []
    for i in range(a.pairs):
        store, out = tmp / f"store{i}", tmp / f"seed{i}.json"
        r = measured([PY, "-m", "runner", *base, f"prompts.name={f}", f"store.root={store}"])
        s = measured([PY, "bench/seed_script.py", "--set", str(f), "--out", str(out), *base])
        same = texts_of_store(store) == json.loads(out.read_text())
        rows.append({"runner": r, "script": s, "identical": same})
        print(f"pair {i}: " + ", ".join(f"{m} {r[m]:.1f}/{s[m]:.1f}" for m in METRICS)
              + f", identical outputs: {same}", flush=True)
    load1 = Path("/proc/loadavg").read_text().strip()
    summary = {}
    for m in METRICS:
        ratios = [x["runner"][m] / x["script"][m] for x in rows]
        summary[m] = {"runner": statistics.median(x["runner"][m] for x in rows),
                      "script": statistics.median(x["script"][m] for x in rows),
                      "ratio": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    print(f"\n{a.n} images x {a.max_tokens} tokens, {a.pairs} pairs; load average before "
          f"{load0} / after {load1}")
    print("| | runner | script | runner / script (median of pairs) |\n|---|---|---|---|")
    for m, name in zip(METRICS, ("wall (s)", "CPU, user + sys (s)", "peak RSS (MiB)"),
                       strict=True):
        v = summary[m]
        print(f"| {name} | {v['runner']:.1f} | {v['script']:.1f} | **{v['ratio']:.3f}** "
              f"(min {v['min']:.3f}, max {v['max']:.3f}) |")
    print(f"outputs identical in every pair: {all(x['identical'] for x in rows)}")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    res = ROOT / "bench/results/pairs.jsonl"
    res.parent.mkdir(exist_ok=True)
    with res.open("a") as fh:
        fh.write(json.dumps({"commit": rev, "label": a.label, "n": a.n,
                             "max_tokens": a.max_tokens, "load_before": load0,
                             "load_after": load1, "pairs": rows, "summary": summary}) + "\n")


if __name__ == "__main__":
    main()
