"""Stage 5, report: what a person reads at the end of a run (rich), and the typed summary
a job returns (the sweep callback reads it)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from runner.console import console


@dataclass
class Summary:
    hash: str | None  # None: the job failed before its config was hashed
    folder: str | None
    model: str
    prompts: str
    status: str  # complete / cached / interrupted / failed / planned
    planned: int = 0
    cached: int = 0
    computed: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine_start_s: float = 0.0
    engine_reused: bool = False
    generate_s: float = 0.0
    total_s: float = 0.0
    max_step_s: float = 0.0  # the longest wait for an engine step (sizes stall_timeout_s)
    restarts: int = 0  # engine restarts after deaths (not counting the poison search)
    error: str | None = None  # a user error that failed this job (in a sweep)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.generate_s if self.generate_s else 0.0

    @property
    def items_per_s(self) -> float:
        return self.computed / self.generate_s if self.generate_s else 0.0


def show(s: Summary) -> None:
    t = Table(title=f"pixtral-runner · {s.model} · {s.prompts}", show_header=False,
              title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    style = {"complete": "green", "cached": "cyan", "interrupted": "yellow"}.get(s.status, "red")
    t.add_row("status", f"[{style}]{s.status}[/]")
    t.add_row("items", f"{s.planned} planned · {s.cached} cached · {s.computed} computed"
              + (f" · [red]{s.errors} errors[/]" if s.errors else ""))
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
    console.print(t)
