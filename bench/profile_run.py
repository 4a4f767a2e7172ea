"""Where the runner's CPU goes: `python -m runner ARGS` in this process, with CPU-seconds per
phase from per-thread CPU clocks (time.thread_time at each phase function's entry and exit, in
whichever thread runs it). No profiler: the run costs what
it costs unprofiled. The engine core is another process: not in this table (bench/pairs.py
gives the whole tree and the command's own process).

    .venv/bin/python bench/profile_run.py model=pixtral_tiny engine=cpu prompts.name=SET ...

Prints one JSON line on stderr; PROFILE_OUT=FILE writes it to FILE too.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import runpy
import sys
import threading
import time

T_START = time.process_time()  # the interpreter's start, before this line

# (phase, module, attribute path); a phase run inside another in the same thread (writing in
# the feeding) is taken out of it; one run in a pool's threads (hashing) never was in it
ROOTS = [
    ("image hashing and probing", "runner.plan.images", "Images._resolve"),
    ("token plan (tokenizer load, counting)", "runner.plan.tokens", "plan_tokens"),
    ("plan (without hashing)", "runner.plan.load", "load_plan"),
    ("engine start (main thread: vLLM's import, LLM())", "runner.job.feed", "Feed.start"),
    ("writing records", "runner.job.sink", "Sink.output"),
    ("feeding (submit: vLLM's preprocessing; stepping, reading outputs)", "runner.job.window",
     "run_window"),
    ("thumbnails (after the last result)", "runner.results.report.thumbs", "ensure"),
    ("scoring and index", "runner.job.recipe", "Job.score_and_index"),
    ("engine stop", "runner.job.feed", "Feed.stop"),
]
SPENT: dict[str, float] = {ph: 0.0 for ph, _, _ in ROOTS}
COVERED: dict[str, float] = {}  # thread name -> CPU inside its outermost phases
_local = threading.local()
_lock = threading.Lock()


def _timed(phase: str, fn):  # noqa: ANN001, ANN202
    @functools.wraps(fn)
    def run(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        stack = _local.__dict__.setdefault("stack", [])
        again = phase in stack  # recursion: counted once, at the outermost call
        stack.append(phase)
        t = time.thread_time()
        try:
            return fn(*a, **kw)
        finally:
            stack.pop()
            dt = time.thread_time() - t
            with _lock:
                if not again:
                    SPENT[phase] += dt
                    if stack:  # inside another phase, in this thread: not that one's own
                        SPENT[stack[-1]] -= dt
                if not stack:
                    name = threading.current_thread().name
                    COVERED[name] = COVERED.get(name, 0.0) + dt
    return run


def instrument() -> None:
    """Each root wrapped where it is defined and wherever a runner module bound it by name."""
    for phase, mod, path in ROOTS:
        m = importlib.import_module(mod)
        owner, _, name = path.rpartition(".")
        holder = getattr(m, owner) if owner else m
        orig = getattr(holder, name)
        wrapped = _timed(phase, orig)
        setattr(holder, name, wrapped)
        if not owner:
            for other in list(sys.modules.values()):
                if getattr(other, "__name__", "").startswith("runner") and \
                        getattr(other, name, None) is orig:
                    setattr(other, name, wrapped)


def report(main_cpu: float, job_cpu: float) -> None:
    t_exit = time.process_time()
    rows = dict(SPENT)
    main = threading.main_thread().name
    out = {"phases_cpu_s": {
        "interpreter start (before the profile)": round(T_START, 2),
        "Hydra, config, the rest of the main thread": round(main_cpu - COVERED.get(main, 0.0),
                                                            2),
        **{k: round(v, 2) for k, v in rows.items()},
        "other threads, outside the phases (vLLM's client threads, the log pump, the "
        "watchdog, native threads)": round(job_cpu - T_START - main_cpu - sum(
            v for k, v in COVERED.items() if k != main), 2),
        "shutdown (after the job: interpreter exit, atexit)": round(t_exit - job_cpu, 2)},
        "process_cpu_s": round(t_exit, 2)}
    print(json.dumps(out), file=sys.stderr, flush=True)
    if os.environ.get("PROFILE_OUT"):
        with open(os.environ["PROFILE_OUT"], "w") as fh:
            json.dump(out, fh)


def main() -> None:
    sys.argv = ["runner", *sys.argv[1:]]
    sys.path.insert(0, os.getcwd())
    importlib.import_module("runner.job.recipe")  # every module a root is bound in
    instrument()
    state: dict[str, float] = {}
    # registered first: runs last, after vLLM's and the runner's own exit handlers
    atexit.register(lambda: report(state["main"], state["job"]))
    try:
        runpy.run_module("runner", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        state["main"], state["job"] = time.thread_time(), time.process_time()


if __name__ == "__main__":
    main()
