"""The engine boundary's interface: what the job sends (one request at a time) and what comes
back (a stream of events). Implemented by the real vLLM engine (`vllm_engine.py`), by a client
of a vLLM server (`server.py`) and by the test double (`fake.py`); nothing here imports vLLM.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from runner.kinds import classify


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str | None
    tokens: int | None  # generated tokens of this sample; None: the server did not say


@dataclass(frozen=True)
class Finished:
    """A request the engine finished: every sample of it. A count a server did not give is
    None (unknown), never 0."""

    key: str
    prompt_tokens: int | None
    samples: list[Sample]
    generated: int | None = None  # the samples' total, from a server that gave only that

    @property
    def completion_tokens(self) -> int | None:
        """The generated tokens over every sample; None when unknown."""
        if self.generated is not None:
            return self.generated
        each = [s.tokens for s in self.samples]
        return None if None in each else sum(t or 0 for t in each)


@dataclass(frozen=True)
class Tokens:
    """Progress counters: tokens processed since the previous Tokens event."""

    prompt: int
    generated: int


@dataclass(frozen=True)
class Failed:
    """A request that ended without output after it was submitted (a server's answer: it
    refused the request, or gave none within engine.request_timeout_s): an item error.
    `kind`: "request" (refused), "image" or "timeout" (runner/kinds.py)."""

    key: str
    reason: str
    kind: str


@dataclass(frozen=True)
class Stepped:
    """The engine took a step and nothing finished: a point where the job may queue more
    (yielded only by engines with `steps`)."""


Event = Finished | Tokens | Failed | Stepped


class Refused(Exception):
    """The engine refused one request (an unreadable image, sampling it rejects): an item
    error, the engine goes on. `kind`: its error kind (runner/kinds.py); by default the one
    the message describes."""

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind or classify(message, "request")


class Engine(Protocol):
    """One live engine. `submit` queues a request; `events` steps the engine until nothing
    is in flight, yielding each finished request at once; a death or stall raises
    runner.errors.EngineDied with the keys not finished, in submit order."""

    kind: str  # "vllm", "fake" or "server"
    max_num_seqs: int  # requests it runs at once (vLLM's, resolved)
    watchdog: str  # "on", or "off: <why>" when a dying engine could hang the run
    max_gap_s: float  # the longest wait for a step so far (sizes engine.stall_timeout_s)
    # events() yields Stepped between steps: its submit works in this process (vLLM's
    # preprocessing), so the job queues a batch in chunks and reads outputs in between
    steps: bool

    def submit(self, key: str, messages: list[dict[str, Any]],
               sampling: dict[str, Any]) -> None: ...

    def in_flight(self) -> int: ...

    def events(self, stall_timeout_s: float | None = None) -> Iterator[Event]: ...

    def why_dead(self) -> str | None: ...

    def kill(self) -> None: ...

    def shutdown(self) -> None: ...

    # At the end of the command (nothing in flight, every result stored, the process exits
    # next): stop without the graceful teardown, leaving no process or file behind.
    def drop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...
