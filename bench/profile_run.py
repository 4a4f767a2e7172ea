"""Where the runner's CPU goes: `python -m runner ARGS` in this process, every thread under
its own cProfile with a per-thread CPU clock (time.thread_time: waiting costs nothing), then
CPU-seconds per phase. The engine core is another process: not in this table.

    .venv/bin/python bench/profile_run.py model=pixtral_tiny engine=cpu prompts.name=SET ...

Phases are the inclusive CPU of their functions, in whichever thread ran them; a phase
nested in another (image hashing in the plan, writing in the feeding) is taken out of it.
"""

from __future__ import annotations

import atexit
import cProfile
import json
import os
import pstats
import runpy
import sys
import threading
import time

T_START = time.process_time()  # the interpreter's start, before this line
PROFILES: list[tuple[str, cProfile.Profile]] = []
_run = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    p = cProfile.Profile(time.thread_time)
    PROFILES.append((self.name, p))
    p.enable()
    try:
        _run(self)
    finally:
        p.disable()


# (phase, file suffix, function name); the first listed phases are taken out of later ones
ROOTS = [
    ("image hashing and probing", "runner/plan/images.py", "_resolve"),
    ("token plan", "runner/plan/tokens.py", "plan_tokens"),
    ("plan (without hashing)", "runner/plan/load.py", "load_plan"),
    ("engine start", "runner/job/feed.py", "start"),
    ("writing records", "runner/job/sink.py", "output"),
    ("feeding (submit: vLLM's preprocessing; reading outputs)", "runner/job/window.py",
     "run_window"),
    ("thumbnails", "runner/results/thumbs.py", "ensure"),
    ("scoring and index", "runner/job/recipe.py", "score_and_index"),
    ("engine stop", "runner/job/feed.py", "stop"),
]
NESTED = {"plan (without hashing)": ["image hashing and probing"],
          "feeding (submit: vLLM's preprocessing; reading outputs)": ["writing records"]}


def cum(stats: pstats.Stats, suffix: str, name: str) -> float:
    return sum(v[3] for (f, _, fn), v in stats.stats.items()  # type: ignore[attr-defined]
               if fn == name and f.endswith(suffix))


def report(t_job_end: float) -> None:
    t_exit = time.process_time()
    rows: dict[str, float] = {ph: 0.0 for ph, _, _ in ROOTS}
    rest_main = rest_other = 0.0
    for i, (_, p) in enumerate(PROFILES):
        s = pstats.Stats(p)
        own = {ph: cum(s, suf, fn) for ph, suf, fn in ROOTS}
        for ph, inner in NESTED.items():
            own[ph] = max(0.0, own[ph] - sum(own[x] for x in inner))
        for ph, v in own.items():
            rows[ph] += v
        rest = s.total_tt - sum(own.values())  # type: ignore[attr-defined]
        rest_main, rest_other = (rest_main + rest, rest_other) if i == 0 else \
            (rest_main, rest_other + rest)
    rows = {"interpreter start (before the profile)": T_START,
            "Hydra, config and the rest of the main thread": rest_main, **rows,
            "other threads' rest (vLLM's client threads, pools)": rest_other,
            "shutdown (after the job: interpreter exit, atexit)": t_exit - t_job_end}
    out = {"phases_cpu_s": {k: round(v, 2) for k, v in rows.items()},
           "process_cpu_s": round(t_exit, 2), "threads": len(PROFILES)}
    print(json.dumps(out), file=sys.stderr, flush=True)
    if os.environ.get("PROFILE_OUT"):
        with open(os.environ["PROFILE_OUT"], "w") as fh:
            json.dump(out, fh)


def main() -> None:
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    p = cProfile.Profile(time.thread_time)
    PROFILES.append(("MainThread", p))
    sys.argv = ["runner", *sys.argv[1:]]
    state: dict[str, float] = {}
    # registered first: runs last, after vLLM's and the runner's own exit handlers
    atexit.register(lambda: report(state["job_end"]))
    p.enable()
    try:
        runpy.run_module("runner", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        p.disable()
        state["job_end"] = time.process_time()


if __name__ == "__main__":
    main()
