"""The end of `python -m runner`. Once the command has stored and shown everything (every
result flushed and fsynced, each run's manifest ended, scored and indexed, the sweep's table
printed), an engine this process started is not waited for through vLLM's graceful teardown
(seconds: the engine core and its workers exit one by one, then this interpreter tears torch
down): its processes are killed and reaped, what they would have removed is removed, and the
process leaves with os._exit. A run never depends on this: a kill -9 at any time loses
nothing (the store is written that way), and within a sweep an engine still shuts down in
order before the next start needs its memory (runner/engine/slot.py)."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from runner.console.logs import drain, flush_std


def status(code: object) -> int:
    """The exit status for a SystemExit code, as Python gives it (a message: printed, 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def leave(code: object) -> NoReturn:
    """Exit with `code` (a SystemExit code); at once when this process started an engine."""
    from runner.engine import SLOT

    if not SLOT.starts:  # no engine, no torch: the ordinary exit is quick
        sys.exit(code)
    n = status(code)
    flush_std()
    SLOT.end()
    drain()
    logging.shutdown()
    flush_std()
    os._exit(n)
