"""The runner against its two peers, in rounds: the runner, a seed-style script
(bench/seed_script.py: one `LLM`, one `llm.chat`) and `vllm run-batch` (vLLM's OpenAI batch
runner, on the batch file the runner's own `dry_run_requests` writes for the same set).

    .venv/bin/python bench/pairs.py [--n 1000] [--max-tokens 8] [--pairs 5] [--label after]

The same requests and the same engine arguments on every arm: the runner's, from the same
Hydra overrides (runner.engine.engine_kwargs; as command-line flags for run-batch), with
max_num_seqs / max_num_batched_tokens set to vLLM's server defaults on CPU (128 / 2048)
unless given. A warm-up round first (not counted), then --pairs rounds, each arm once a round
in the same order (A B C A B C). Each run is a fresh process (the runner on a fresh store);
per run: wall, CPU (user + sys of the whole process tree, sampled from /proc), peak RSS of
the largest process (VmHWM), and the time from its last stored output (the output file's
last write) to the exit of the command's process. Prints, per metric, the medians and the
median, min and max of the per-round ratios runner / peer, how many outputs were identical,
and appends the result to bench/results/pairs.jsonl with the load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import make_set  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
METRICS = ("wall_s", "cpu_s", "rss_mib", "exit_s")
NAMES = ("wall (s)", "CPU, user + sys, whole tree (s)", "peak RSS (MiB)",
         "last stored output -> exit (s)")
ARMS = ("runner", "script", "batch")


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


def measured(cmd: list[str], outputs: Callable[[], list[Path]],
             env: dict | None = None) -> dict:
    """Wall; CPU: user + sys of every process of the tree, as last seen (sampled every
    0.1 s: a process is followed after its parent exits; one living < 0.1 s is missed);
    peak RSS: the largest VmHWM of any of them; exit: from the last write of the `outputs`
    (their mtime) to the exit of the command's process (seen by a thread waiting for it)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, **(env or {})})
    exited: list[float] = []

    def wait() -> None:
        p.wait()
        exited.append(time.time())

    threading.Thread(target=wait, daemon=True).start()
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
    while not exited:  # the waiting thread has seen the exit; it records the time next
        time.sleep(0.01)
    stored = max(f.stat().st_mtime for f in outputs())
    return {"wall_s": wall, "cpu_s": sum(c for c, _ in seen.values()),
            "main_cpu_s": seen[p.pid][0],  # the command's own process (the engine core apart)
            "rss_mib": max(h for _, h in seen.values()) / 1024,
            "exit_s": exited[0] - stored}


def texts_of_store(store: Path) -> dict[str, str]:
    out = {}
    for f in store.glob("*/results.jsonl"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            out[r["id"]] = r["output"]
    return out


def texts_of_batch(out: Path) -> dict[str, str]:
    """{custom_id: text} from run-batch's output file (a failed request: its error)."""
    texts = {}
    for line in out.read_text().splitlines():
        r = json.loads(line)
        body = (r.get("response") or {}).get("body") or {}
        texts[r["custom_id"]] = body["choices"][0]["message"]["content"] \
            if body.get("choices") else f"error: {r.get('error') or body}"
    return texts


def batch_flags(kw: dict) -> list[str]:
    """vLLM's engine arguments (LLM keyword names) as its command line's flags."""
    out: list[str] = []
    for k, v in kw.items():
        flag = "--" + k.replace("_", "-")
        if v is None:
            continue
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, dict | list):
            out += [flag, json.dumps(v)]
        else:
            out += [flag, str(v)]
    return out


def peers(f: Path, tmp: Path, base: list[str]) -> tuple[Path, list[str], dict]:
    """The batch file of the set (written by the runner's dry run: the runner's requests),
    and run-batch's flags and environment for the runner's engine arguments."""
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from runner.config import register
    from runner.engine import engine_spec

    batch = tmp / "batch.jsonl"
    dry = subprocess.run([PY, "-m", "runner", *base, f"prompts.name={f}", "dry_run=true",
                          f"dry_run_requests={batch}", f"store.root={tmp / 'dry'}"], cwd=ROOT,
                         capture_output=True, text=True)
    if dry.returncode:
        sys.exit(f"the dry run failed:\n{dry.stderr[-3000:]}")
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*base, f"prompts.name={f}"])
    kw, env = engine_spec(cfg, f.parent)
    model = json.loads(batch.read_text().splitlines()[0])["body"]["model"]
    return batch, [*batch_flags(kw), "--served-model-name", model], env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="rounds run first, not counted")
    ap.add_argument("--max-num-seqs", type=int, default=128)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pairs-"))
    f = make_set(tmp / "set", a.n, (256, 192), "jpg")
    base = ["model=pixtral_tiny", "engine=cpu", f"sampling.max_tokens={a.max_tokens}",
            f"engine.max_num_seqs={a.max_num_seqs}",
            f"engine.max_num_batched_tokens={a.max_num_batched_tokens}"]
    batch, flags, env = peers(f, tmp, base)
    load0 = Path("/proc/loadavg").read_text().strip()
    rows: list[dict] = []
    for i in range(a.warmup + a.pairs):
        store, out, bout = tmp / f"store{i}", tmp / f"seed{i}.json", tmp / f"batch{i}.jsonl"
        r = measured([PY, "-m", "runner", *base, f"prompts.name={f}", f"store.root={store}"],
                     lambda d=store: list(d.glob("*/results.jsonl")))
        s = measured([PY, "bench/seed_script.py", "--set", str(f), "--out", str(out), *base],
                     lambda o=out: [o])
        b = measured([PY, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(batch),
                      "-o", str(bout), *flags], lambda o=bout: [o], env)
        texts = texts_of_store(store)
        seed = json.loads(out.read_text())
        same = {"script": sum(texts.get(k) == v for k, v in seed.items()),
                "batch": sum(texts.get(k) == v for k, v in texts_of_batch(bout).items())}
        warm = i < a.warmup
        if not warm:
            rows.append({"runner": r, "script": s, "batch": b, "identical": same,
                         "items": len(texts)})
        print(f"{'warm-up' if warm else 'round'} {i}: " + ", ".join(
            f"{m} {r[m]:.2f}/{s[m]:.2f}/{b[m]:.2f}" for m in METRICS)
            + f" (runner/script/batch); identical to the runner's outputs: script "
            f"{same['script']}/{len(texts)}, batch {same['batch']}/{len(texts)}", flush=True)
    load1 = Path("/proc/loadavg").read_text().strip()
    summary: dict = {}
    for m in METRICS:
        summary[m] = {arm: statistics.median(x[arm][m] for x in rows) for arm in ARMS}
        for peer in ARMS[1:]:
            ratios = [x["runner"][m] / x[peer][m] for x in rows]
            summary[m][f"runner/{peer}"] = {"median": statistics.median(ratios),
                                            "min": min(ratios), "max": max(ratios)}
        summary[m]["min"] = {arm: min(x[arm][m] for x in rows) for arm in ARMS}
        summary[m]["max"] = {arm: max(x[arm][m] for x in rows) for arm in ARMS}
    print(f"\n{a.n} images x {a.max_tokens} tokens, {a.pairs} rounds after {a.warmup} "
          f"warm-up; load average before {load0} / after {load1}")
    print("| medians (min-max) | runner | seed script | `vllm run-batch` | runner / script "
          "| runner / run-batch |\n|---|---|---|---|---|---|")
    for m, name in zip(METRICS, NAMES, strict=True):
        v = summary[m]
        cells = [f"{v[arm]:.2f} ({v['min'][arm]:.2f}-{v['max'][arm]:.2f})" for arm in ARMS]
        ratios = [v[f"runner/{peer}"] for peer in ARMS[1:]]
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(
            f"**{q['median']:.3f}** ({q['min']:.3f}-{q['max']:.3f})" for q in ratios) + " |")
    print("identical to the runner's outputs, per round: " + ", ".join(
        f"script {x['identical']['script']}/{x['items']} batch "
        f"{x['identical']['batch']}/{x['items']}" for x in rows))
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True).stdout.strip()
    res = ROOT / "bench/results/pairs.jsonl"
    res.parent.mkdir(exist_ok=True)
    with res.open("a") as fh:
        fh.write(json.dumps({"commit": rev, "label": a.label, "n": a.n,
                             "max_tokens": a.max_tokens, "arms": ARMS, "warmup": a.warmup,
                             "max_num_seqs": a.max_num_seqs,
                             "max_num_batched_tokens": a.max_num_batched_tokens,
                             "load_before": load0,
                             "load_after": load1, "pairs": rows, "summary": summary}) + "\n")


if __name__ == "__main__":
    main()
