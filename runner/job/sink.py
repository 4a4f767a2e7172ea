"""Where generation's outcomes go: each one a record in the run's results, counted in the
summary, the progress display and (for the engine's outcomes) the error budget."""

from __future__ import annotations

from runner.console.display import GenerationProgress
from runner.console.summary import Summary
from runner.engine.api import Finished
from runner.job.budget import Budget
from runner.plan.load import Item
from runner.store.record import error_record, ok_record
from runner.store.rundir import ResultWriter


class Sink:
    def __init__(self, writer: ResultWriter, items: list[Item], summary: Summary,
                 progress: GenerationProgress, budget: Budget):
        self.writer, self.s, self.progress, self.budget = writer, summary, progress, budget
        self.by_key = {it.key: it for it in items}

    def output(self, out: Finished) -> None:
        r = ok_record(self.by_key[out.key], out)
        self.writer.write(r)
        self.s.computed += 1
        self.s.prompt_tokens += r["prompt_tokens"] or 0  # an unknown count adds nothing
        self.s.completion_tokens += r["completion_tokens"] or 0
        self.progress.item(out.key, r["completion_tokens"] or 0)
        self.budget.done(r["id"], None)

    def planned_errors(self, items: list[Item]) -> None:
        """The item errors the plan found: stored, never sent, not the engine's outcomes."""
        for it in items:
            if it.error:
                self._error(it.key, it.error, it.error_kind or "other")

    def _error(self, key: str, reason: str, kind: str) -> None:
        self.writer.write(error_record(self.by_key[key], reason, kind))
        self.s.errors += 1
        self.s.error_kinds[kind] = self.s.error_kinds.get(kind, 0) + 1
        self.progress.item(key)

    def error(self, key: str, reason: str, kind: str) -> None:
        self._error(key, reason, kind)
        self.budget.done(self.by_key[key].id, kind)

    def tokens(self, generated: int) -> None:
        self.progress.tokens(generated)
