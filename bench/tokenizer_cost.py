"""What building the Mistral tokenizer costs the runner's process, and how often it is built:
`python -m runner ARGS` in this process, with each tokenizer constructor timed (wall, and the
CPU of the thread that runs it: time.thread_time) and counted, per thread.

    .venv/bin/python bench/tokenizer_cost.py model=pixtral_tiny engine=cpu prompts.name=SET ...

Timed (a call inside another timed call is also counted in that one):
- the plan's TokenCounter (runner/plan/tokens.py: mistral-common's MistralTokenizer.from_file
  inside it);
- mistral-common's MistralTokenizer.from_file and Tekkenizer.__init__ (whoever calls them);
- transformers' MistralCommonBackend.__init__ (vLLM's from_pretrained builds one);
- vLLM's MistralTokenizer.__init__ (its own vocabulary dict and list on top), and
  vllm.tokenizers.registry's get_tokenizer / cached_get_tokenizer.
Modules are wrapped as they are imported (an import hook), so nothing is imported earlier
than the run imports it. Prints one JSON line on stderr; PROFILE_OUT=FILE writes it to FILE.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.util
import json
import os
import runpy
import sys
import threading
import time

# module -> [(attribute path, kind)]; kind "cm": a classmethod
TARGETS = {
    "runner.plan.tokens": [("TokenCounter.__init__", "")],
    "mistral_common.tokens.tokenizers.mistral": [("MistralTokenizer.from_file", "cm")],
    "mistral_common.tokens.tokenizers.tekken": [("Tekkenizer.__init__", "")],
    "transformers.tokenization_mistral_common": [("MistralCommonBackend.__init__", "")],
    "vllm.tokenizers.mistral": [("MistralTokenizer.__init__", "")],
    "vllm.tokenizers.registry": [("get_tokenizer", ""), ("cached_get_tokenizer", "")],
}
CALLS: list[dict] = []
_lock = threading.Lock()
T0 = time.perf_counter()


def _timed(name: str, fn):  # noqa: ANN001, ANN202
    @functools.wraps(fn)
    def run(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        w, c = time.perf_counter(), time.thread_time()
        try:
            return fn(*a, **kw)
        finally:
            with _lock:
                CALLS.append({"what": name, "thread": threading.current_thread().name,
                              "at_s": round(w - T0, 3),
                              "wall_s": round(time.perf_counter() - w, 3),
                              "cpu_s": round(time.thread_time() - c, 3)})
    return run


def patch(mod) -> None:  # noqa: ANN001
    for path, kind in TARGETS[mod.__name__]:
        owner, _, name = path.rpartition(".")
        holder = getattr(mod, owner) if owner else mod
        orig = holder.__dict__[name]
        label = f"{mod.__name__}.{path}"
        if kind == "cm":
            setattr(holder, name, classmethod(_timed(label, orig.__func__)))
        else:
            new = _timed(label, orig)
            setattr(holder, name, new)
            if hasattr(orig, "cache_clear") and not hasattr(new, "cache_clear"):
                new.cache_clear = orig.cache_clear  # type: ignore[attr-defined]


class Hook(importlib.abc.MetaPathFinder):
    """Wraps a target module's functions right after it is executed."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
        if name not in TARGETS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader, run = spec.loader, spec.loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            run(module)
            patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def report() -> None:
    total: dict[str, dict] = {}
    for c in CALLS:
        t = total.setdefault(c["what"], {"calls": 0, "wall_s": 0.0, "cpu_s": 0.0})
        t["calls"] += 1
        t["wall_s"] = round(t["wall_s"] + c["wall_s"], 3)
        t["cpu_s"] = round(t["cpu_s"] + c["cpu_s"], 3)
    out = {"total": total, "calls": CALLS}
    print(json.dumps(out), file=sys.stderr, flush=True)
    if os.environ.get("PROFILE_OUT"):
        with open(os.environ["PROFILE_OUT"], "w") as fh:
            json.dump(out, fh, indent=1)


def main() -> None:
    sys.argv = ["runner", *sys.argv[1:]]
    sys.path.insert(0, os.getcwd())
    sys.meta_path.insert(0, Hook())
    atexit.register(report)  # registered first: runs after the runner's own exit handlers
    real_exit = os._exit

    def exit_(n: int) -> None:  # the runner's fast exit (runner/launch/ending.py) skips atexit
        atexit.unregister(report)
        report()
        real_exit(n)

    os._exit = exit_
    try:
        runpy.run_module("runner", run_name="__main__", alter_sys=True)
    except SystemExit:
        pass


if __name__ == "__main__":
    main()
