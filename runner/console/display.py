"""The console display: what a person reads (rich): the plan line, the engine start,
generation progress, the summary table.
A live display on a terminal; with no TTY (CI, a pipe, SLURM logs), or while the engine's
logs share the console (log.engine=console), plain lines, a progress line every PLAIN_EVERY
seconds at most."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from runner.console import console
from runner.console.summary import Summary
from runner.errors import Interrupted, RunFailed
from runner.kinds import by_kind_order, kinds_text

PLAIN_EVERY = 10.0


def _live() -> bool:
    from runner.console.logs import current

    log = current()
    return console.is_terminal and (log is None or log.capture)


def _phase() -> str:
    from runner.console.logs import current

    log = current()
    return log.phase if log is not None else ""


def plan_line(items: int, cached: int, images: int, prompt_tokens: int, errors: int) -> None:
    console.print(f"[bold]plan[/] {items} items · {cached} cached · to run: {images} images, "
                  f"{prompt_tokens:,} prompt tokens" + (f" · [red]{errors} item errors[/]"
                                                        if errors else ""),
                  highlight=False)


class _Phase(ProgressColumn):
    def render(self, task: Any) -> Text:
        return Text(f"· {_phase() or 'importing vLLM'}", style="dim")


@contextmanager
def starting(model: str, reused: bool = False, what: str | None = None) -> Iterator[None]:
    """The engine start: a spinner with the elapsed time and vLLM's current phase."""
    what = what or f"Starting vLLM engine for {model}"
    t = time.perf_counter()
    if reused:
        yield
        console.print(f"engine reused for {model}")
        return
    if _live():
        with Progress(SpinnerColumn(), TextColumn(what), TimeElapsedColumn(), _Phase(),
                      console=console, transient=True, redirect_stdout=False,
                      redirect_stderr=False) as p:
            p.add_task("start", total=None)
            yield
    else:
        console.print(f"{what}…")
        yield
    console.print(f"vLLM ready in {time.perf_counter() - t:.1f}s", highlight=False)


def _hms(s: float) -> str:
    return str(timedelta(seconds=round(s)))


class GenerationProgress:
    """Items done, generated tokens/s and an ETA from the token plan: each item may generate
    up to its output bound (max_tokens x n, or max_model_len minus its planned prompt tokens);
    done is what vLLM's token counters report generated, plus the bound finished items left
    unused. ETA = the bound still open / the generated tokens/s so far: an upper bound at a
    steady rate, that tightens as items stop early."""

    def __init__(self, bounds: dict[str, int], items: int):
        self.bounds = bounds  # key -> output bound, engine items only
        self.total = sum(bounds.values()) or 1
        self.items, self.done = items, 0
        self.gen = 0  # generated since the start, per the engine's token counters
        self.unused = 0  # output bound that finished items did not use
        self.finished_gen = 0  # generated tokens of finished items (when counters are off)
        self.progress: Progress | None = None
        self.t0 = self.last = time.perf_counter()

    def __enter__(self) -> GenerationProgress:
        self.t0 = self.last = time.perf_counter()
        if _live():
            self.progress = Progress(
                TextColumn("[bold]generating"), BarColumn(), TextColumn("{task.fields[line]}"),
                TimeElapsedColumn(), console=console, transient=True, redirect_stdout=False,
                redirect_stderr=False)
            self.task = self.progress.add_task("gen", total=self.total, line=self.line())
            self.progress.start()
        else:
            console.print(f"generating {self.items} items…")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def tokens(self, generated: int) -> None:
        """The engine's counters moved (an engine Tokens event)."""
        self.gen += generated
        self._show()

    def item(self, key: str, completion_tokens: int = 0) -> None:
        self.done += 1
        self.unused += max(0, self.bounds.get(key, 0) - completion_tokens)
        self.finished_gen += completion_tokens
        self._show()

    def work(self) -> int:
        return min(self.total, max(self.gen, self.finished_gen) + self.unused)

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        tps = max(self.gen, self.finished_gen) / el if el > 0 else 0.0
        eta = _hms((self.total - self.work()) / tps) if tps else "?"
        return f"{self.done}/{self.items} items · {tps:.0f} tok/s · ETA ≤ {eta}"

    def _show(self) -> None:
        now = time.perf_counter()
        if self.progress is not None:
            self.progress.update(self.task, completed=self.work(), line=self.line())
        elif now - self.last >= PLAIN_EVERY or self.done == self.items:
            self.last = now
            console.print(f"generating {self.line()}", highlight=False)


def show(s: Summary) -> None:
    t = Table(title=f"pixtral-runner · {s.model} · {s.prompts}", show_header=False,
              title_justify="left")
    t.add_column(style="bold")
    t.add_column(overflow="fold")  # paths in full
    style = {"complete": "green", "cached": "cyan", "interrupted": "yellow"}.get(s.status, "red")
    t.add_row("status", f"[{style}]{s.status}[/]")
    t.add_row("items", f"{s.planned} planned · {s.cached} cached · {s.computed} computed"
              + (f" · [red]{s.errors} errors[/] ({kinds_text(by_kind_order(s.error_kinds))})"
                 if s.errors else ""))
    if s.computed:
        t.add_row("tokens", f"{s.prompt_tokens} prompt · {s.completion_tokens} generated")
        t.add_row("speed", f"{s.tokens_per_s:.1f} generated tokens/s "
                  f"({s.items_per_s:.2f} items/s)")
        start = "engine reused" if s.engine_reused else f"engine start {s.engine_start_s:.1f}s"
        t.add_row("time", f"{start} · generation {s.generate_s:.1f}s · total {s.total_s:.1f}s")
    else:
        t.add_row("time", f"total {s.total_s * 1000:.0f} ms")
    t.add_row("run", s.hash or "-")
    t.add_row("folder", s.folder or "-")
    if s.computed or s.errors:
        t.add_row("engine log", f"{s.folder}/engine.log")
    console.print(t)


def show_tail(log: Any, lines: list[str]) -> None:
    """The last lines of a failed run's engine log, and where the whole log is."""
    if lines:
        console.print(f"[dim]── last {len(lines)} lines of the engine log ──[/]")
        for ln in lines:
            console.print(ln, markup=False, highlight=False, overflow="ellipsis", no_wrap=True,
                          style="dim")
    console.print(f"engine log: {log}", soft_wrap=True)  # one line: a path to copy


def show_error(e: BaseException) -> None:
    """An error that ends a job, as one line (and a failed run's log tail)."""
    if isinstance(e, Interrupted):
        console.print(f"[yellow]{e}")
    elif isinstance(e, KeyboardInterrupt):  # outside generation: nothing to keep
        console.print("[yellow]Interrupted.")
    else:
        console.print(f"[bold red]error:[/] {escape(str(e))}")  # plain text: [a,b] stays
        if isinstance(e, RunFailed):
            show_tail(e.log, e.tail)


def warn_ignored(file: Path, ignored: dict[str, int]) -> None:
    """Request body fields of a batch file that the runner cannot honor, counted."""
    if ignored:
        fields = ", ".join(f"{k} ({n} requests)" for k, n in sorted(ignored.items()))
        console.print(f"[yellow]warning: {file.name}: body fields not honored "
                      f"(the runner has no equivalent): {fields}.")
