"""Ctrl-C and SIGTERM during generation: both raise KeyboardInterrupt in the main thread, so
the job keeps what finished; a second Ctrl-C must not cut its bookkeeping short."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any

_CAUGHT = (signal.SIGTERM, signal.SIGINT)


class Interrupts:
    """`with Interrupts() as sig:`; `sig.signalled` says a signal came (a Ctrl-C to the
    process group also stops the engine, which then fails on its own); `sig.shield()` ignores
    Ctrl-C until the block ends, when every handler is put back."""

    def __enter__(self) -> Interrupts:
        self.signalled: list[int] = []
        self.prev: dict[int, Any] = {s: signal.signal(s, self._raise) for s in _CAUGHT}
        return self

    def _raise(self, signum: int, frame: FrameType | None) -> None:
        self.signalled.append(signum)
        raise KeyboardInterrupt

    def shield(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self.prev[signal.SIGTERM])

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self.prev.items():
            signal.signal(s, handler)
