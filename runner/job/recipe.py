"""The recipe: config -> plan -> engine -> store -> report, as one `Job` per config.
Everything else is config."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.console import console
from runner.console.display import GenerationProgress, plan_line, show, warn_ignored
from runner.console.summary import Summary
from runner.engine.quant import check_model
from runner.errors import Interrupted
from runner.job.budget import Budget, check_plan, rate_of
from runner.job.feed import Feed
from runner.job.judging import judge_step
from runner.job.retry import retire, retryable
from runner.job.signals import Interrupts
from runner.job.sink import Sink
from runner.kinds import parse_kinds
from runner.plan.images import pixel_limit
from runner.plan.load import Item, Plan, check_errors, load_plan
from runner.plan.sampling import bound, command_line, merge, sampling_of, sources
from runner.results.report.thumbs import ensure_beside
from runner.store import manifest
from runner.store.record import Record, counts
from runner.store.rundir import ResultWriter, RunDir, run_hash
from runner.store.view import View, register


def check_before_download(cfg: DictConfig, set_root: Any) -> None:
    """What a dry run can tell before any download or vLLM install: engine.extra against
    vLLM's argument names (the list in runner/engine/engine_args.txt), and missing weights as
    one line (the plan is still shown)."""
    from runner.bundled import missing_weights
    from runner.engine.args import check_engine_args, engine_spec, served

    if not served(cfg):
        check_engine_args(engine_spec(cfg, set_root)[0])
    if (why := missing_weights(cfg.model)) is not None:
        console.print(f"[yellow]{why}")


class Job:
    """One config's run: prepare -> generate -> finish. It owns the plan, the run folder,
    the result writer, the engine and the summary; `run` says in which order they happen."""

    def __init__(self, cfg: DictConfig, overrides: list[str]):
        from runner.engine import SLOT

        self.cfg, self.overrides = cfg, overrides
        self.starts0 = SLOT.starts  # the process's engine starts before this job
        self.t0 = time.perf_counter()
        self.plan: Plan
        self.rd: RunDir
        self.summary: Summary
        self.stored: dict[str, Any] = {}  # records already in the run folder, by key
        self.feed: Feed | None = None  # the engine side (its engine: None until started)
        self.sampling: dict[str, Any] = {}  # the run's sampling (runner/plan/sampling.py)
        self.explicit: dict[str, Any] = {}  # of it, what the command line set
        self.writer: ResultWriter | None = None
        self.prompt_tokens: dict[str, int] = {}  # the token plan, by item key
        self.retired: dict[str, Record] = {}  # error records to retry (runner/job/retry.py)
        self.origin: dict[str, Any] = {}  # a benchmark's provenance (runner/benchmarks/preset)

    def run(self) -> Summary:
        cfg = self.cfg
        from runner.benchmarks.preset import resolve, selection

        # a benchmark preset: imported into the store's cache on first use, so the set exists
        # before anything (the engine's media root among them) looks for it
        self.origin = resolve(cfg)
        if cfg.dry_run:
            from runner.plan.tokens import model_len, needs, plan_tokens, show_plan

            self.prepare()
            check_before_download(cfg, self.plan.root)
            toks = plan_tokens(cfg, self.plan)
            show_plan(cfg, self.plan, toks, stored=self.stored)
            self.summary.plan = n = needs(toks, {it.key: self.effective(it).get("max_tokens")
                                                 for it in self.plan.items},
                                          cfg.model.max_model_len)
            n["selection"] = selection(self.origin)  # a benchmark's rows: which of them
            if n["selection"]:
                console.print(f"{cfg.prompts.benchmark}: {n['selection']}", highlight=False)
            mml = cfg.model.max_model_len  # None: the model's (a hosted model: the API's)
            n["model_len"] = own = model_len(cfg.model)
            console.print(f"needs max_model_len ≥ {n['needs_len']:,} (its largest prompt, "
                          f"{n['max_prompt_tokens']:,} tokens, plus its max_tokens); "
                          f"model.max_model_len is {'unset' if mml is None else f'{mml:,}'}"
                          + ("" if own is None else f"; the model takes at most {own:,}"),
                          highlight=False)
            if own is not None and mml is not None and mml > own:
                console.print(f"[red]model.max_model_len={mml:,} is over the {own:,} tokens "
                              f"'{cfg.model.name}' takes ({cfg.model.path}): vLLM refuses it "
                              "at engine start; lower model.max_model_len.", highlight=False)
            src = sources(self.explicit, [it.sampling for it in self.plan.items])
            if src["set_or_items"] or src["command_line"]:  # which sampling runs, from where
                console.print(f"sampling: the run's, under the set's or items' "
                              f"{src['set_or_items']}, under the command line's "
                              f"{src['command_line']}", highlight=False)
            if cfg.get("dry_run_requests"):
                from runner.plan.batchfile import write_requests

                n = write_requests(Path(cfg.dry_run_requests), self.plan, self.sampling,
                                   cfg.model.get("hf_repo") or cfg.model.name, self.explicit)
                console.print(f"{n} requests written to {cfg.dry_run_requests} "
                              "(OpenAI batch input)")
            return self._ended("planned")
        from runner.console.logs import engine_log

        self.rd = RunDir(cfg.store.root, run_hash(cfg), (cfg.shard.index, cfg.shard.count))
        self.feed = Feed(cfg)
        if self.rd.manifest().get("status") != "complete" and not self.feed.live():
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
                    check_model(cfg.model)
                    self.check(todo)
                    return self.compute(todo)
        return self.cached()

    def cached(self) -> Summary:
        """Nothing left to compute: the stored run's summary, its scores and the index."""
        self.plan.remember()
        self._ended("cached")
        if self.rd.exists():
            register(self.rd.path, self.view)
            manifest.viewed(self.rd, self.view)
        self.score_and_index()
        self.summary.judge = judge_step(self.cfg, self.rd, self.view)
        return self.summary

    def compute(self, todo: list[Item]) -> Summary:
        """Under the run's lock: what is still missing, generated and stored."""
        self.plan.remember()
        with self.rd.lock(self.cfg.store.wait, lambda holder: console.print(
                f"[yellow]Run {self.rd.hash} is being written by {holder}; waiting…")):
            todo = self.pending()  # another process may have finished it meanwhile
            if todo:
                thumbs = None
                try:
                    self.generate(todo)
                    # The report's thumbnails, after the last result: during generation they
                    # took CPU from the engine (2 cores); here they overlap scoring and index.
                    thumbs = ensure_beside(self.plan.items, self.cfg.store.root) \
                        if self.cfg.store.thumbnails else None
                finally:
                    self.score_and_index()
                if thumbs is not None:  # a complete run has its report's thumbnails
                    thumbs.join()
                # after generation, when a judge is configured
                self.summary.judge = judge_step(self.cfg, self.rd, self.view)
                return self.summary
        return self.cached()

    # --- prepare: plan, run folder, what is left to do (nothing written yet) --------------

    def prepare(self, show: bool = True) -> list[Item]:
        cfg = self.cfg
        self.plan = load_plan(cfg, show)
        self.rd = RunDir(cfg.store.root, run_hash(cfg), (cfg.shard.index, cfg.shard.count))
        if self.feed is None:  # else made before the plan, and maybe starting beside it
            self.feed = Feed(cfg)
        self.feed.knows_root(self.plan.root)
        self.sampling = sampling_of(cfg)
        self.explicit = command_line(self.overrides, self.sampling)  # wins over a set's
        self.error_rate = rate_of(cfg.prompts.get("max_error_rate"))
        self.retry_kinds = parse_kinds(cfg.get("retry_errors"), "retry_errors")
        warn_ignored(self.plan.file, self.plan.ignored)
        self.summary = Summary(self.rd.hash, str(self.rd.path), cfg.model.name, self.plan.name,
                               "planned", planned=len(self.plan.items))
        return self.pending()

    def prepare_beside_start(self) -> list[Item]:
        """Plan the set (and its token plan) in a thread while the engine starts here. A
        planning error stops the engine start at once and is raised as itself."""
        from runner.engine import SLOT

        check_model(self.cfg.model)  # the weights, before anything loads

        def plan() -> list[Item]:
            todo = self.prepare(show=False)
            self.check(todo)
            return todo

        start, todo = SLOT.beside(self.feed.start, plan)
        self.summary.engine_start_s, self.summary.engine_reused = start
        return todo

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
        from runner.plan.tokens import plan_tokens, totals

        toks = plan_tokens(self.cfg, self.plan, todo)
        self.prompt_tokens = {t.key: t.prompt_tokens for t in toks}
        tot = totals(toks)
        plan_line(len(self.plan.items), self.summary.cached, tot["images"],
                  tot["prompt_tokens"], tot["errors"])
        check_errors(todo, self.cfg.prompts.on_item_error)
        check_plan(self.error_rate, self.plan.items, self.stored, todo)

    # --- generate: the engine (runner/job/feed.py), the run folder, each outcome stored -----

    def open_run(self) -> None:
        """Register the run folder once the engine is up (a failed start leaves none)."""
        from runner.console.logs import attach

        self.rd.create(self.cfg, self.overrides)
        register(self.rd.path, self.view)
        attach(self.rd.path)  # the engine's log so far moves into <run>/engine.log
        manifest.begin(self.rd, self.cfg, self.overrides, self.plan.name, self.feed.engine,
                       self.feed.quant,
                       sources(self.explicit, [it.sampling for it in self.plan.items]))
        manifest.viewed(self.rd, self.view)
        if self.retired:
            retire(self.rd, self.retired)  # before the writer opens the file it rewrites
        self.writer = self.rd.writer(self.cfg.store.fsync_every, self.cfg.store.fsync_seconds)

    def generate(self, todo: list[Item]) -> None:
        """Store planned item errors, feed the engine every other item, store each output as
        it finishes. Ctrl-C or SIGTERM keep what finished and raise Interrupted."""
        runnable = [it for it in todo if not it.error]
        if runnable and self.feed.engine is None:  # else it started beside the plan
            self.summary.engine_start_s, self.summary.engine_reused = self.feed.start()
        self.open_run()
        assert self.writer is not None
        mml = self.cfg.model.max_model_len
        # each output's bound: its max_tokens, else what is left of max_model_len; times n
        progress = GenerationProgress({it.key: bound(self.effective(it),
                                             self.prompt_tokens.get(it.key, 0), mml)
                               for it in runnable}, len(todo))
        sink = Sink(self.writer, todo, self.summary, progress,
                    Budget(self.error_rate, str(self.rd.path)))
        status, error, tg = "failed", None, time.perf_counter()
        with Interrupts() as sig:
            try:
                # vLLM decodes the images in this process: the plan's Pillow limit holds there
                with progress, pixel_limit(self.cfg.prompts.max_image_pixels):
                    sink.planned_errors(todo)  # stored, never sent to the engine
                    if runnable:
                        self.feed.run(runnable, self.effective, sink, self.rd, self.summary)
                status = "complete"
            except KeyboardInterrupt:
                status = "interrupted"
            except Exception as e:
                if not sig.signalled:  # a Ctrl-C to the process group also stops the engine
                    error = f"{type(e).__name__}: {e}"
                    raise
                status = "interrupted"
            finally:
                sig.shield()
                self.summary.generate_s = time.perf_counter() - tg
                self.finish(status, error)
        if status == "interrupted":
            show(self.summary)
            raise Interrupted(f"Interrupted: {self.summary.computed} items stored in "
                              f"{self.rd.path}; rerun the same command to finish the rest.")

    @functools.cached_property
    def view(self) -> View:
        """The items this config plans, every shard's: what its figures cover."""
        p, whole = self.cfg.prompts, self.plan.whole or [(it.id, it.key) for it in self.plan.items]
        source = {"set": self.plan.name, "file": str(self.plan.file), "limit": p.limit,
                  "shards": self.cfg.shard.count, **self.origin}
        return View([k for _, k in whole], [i for i, _ in whole], source)

    def effective(self, it: Item) -> dict[str, Any]:
        """The item's sampling: its set's and its own override over the run's."""
        return merge(self.sampling, it.sampling, self.explicit)

    # --- finish: the writer closed, the manifest's end; then scores and the index ----------

    def finish(self, status: str, error: str | None) -> None:
        from runner.engine import SLOT

        if self.writer is not None:
            self.writer.close()
        self._ended(status)
        keys = set(self.view.keys)  # this config's items, not the folder's
        mine = [r for k, r in self.rd.read_results().items() if k in keys]
        manifest.end(self.rd, self.summary, error, SLOT.starts, counts(mine))
        server = getattr(self.feed.engine, "server", None) if self.feed else None
        if server:
            manifest.server_end(self.rd, server)
        if server and server.get("api"):
            manifest.api_usage(self.rd, self.cfg.model.api, server, mine)

    def score_and_index(self) -> None:
        """Score the stored results (cheap, no engine: a changed scorer never regenerates)
        and register the run in the index."""
        if self.rd.exists():
            from runner.results.runs import index
            from runner.results.scoring import score

            m = score.score_run(self.rd.path, self.plan.file, view=self.view)
            self.summary.view = self.view.id
            index.upsert(self.rd.root, self.rd.path)
            if m.get("scored"):
                console.print(f"scored {m['scored']} items (of {self.view.n} planned): "
                              f"accuracy {m.get('accuracy', 0):.3f}")

    def _ended(self, status: str) -> Summary:
        from runner.engine import SLOT
        from runner.engine.args import served

        self.summary.status, self.summary.total_s = status, time.perf_counter() - self.t0
        # a server's or an API's client is no engine: such a job started none
        self.summary.engine_starts = 0 if served(self.cfg) else SLOT.starts - self.starts0
        return self.summary
