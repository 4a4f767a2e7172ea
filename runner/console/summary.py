"""The typed summary a job returns: the console shows it, a sweep collects it."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    max_gap_s: float = 0.0  # the longest wait for an engine step (sizes stall_timeout_s)
    restarts: int = 0  # engine restarts after deaths (not counting the poison search)
    engine_starts: int = 0  # engines this job started (restarts included; 0: reused or none)
    error_kinds: dict[str, int] = field(default_factory=dict)  # this invocation's, by kind
    error: str | None = None  # a user error that failed this job (in a sweep)
    view: str | None = None  # the items this config planned (runner/store/view.py): its figures'
    plan: dict | None = None  # a dry run's needs (runner/plan/tokens.py `needs`)
    judge: str | None = None  # the id of the configured judge that rated it (job/judging.py)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.generate_s if self.generate_s else 0.0

    @property
    def items_per_s(self) -> float:
        return self.computed / self.generate_s if self.generate_s else 0.0
