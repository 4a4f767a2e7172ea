"""Errors a user can cause: one clear sentence, a distinct exit code, no traceback."""


class UserError(Exception):
    """A problem the user can fix (a path, a key, a file); the message says what to do."""

    exit_code = 2


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during generation; finished items are kept."""

    exit_code = 130


class RunFailed(Exception):
    """The engine (or generation) failed; the details are in the engine log."""

    exit_code = 1

    def __init__(self, message: str, log: object, tail: list[str], exit_code: int = 1):
        super().__init__(message)
        self.log, self.tail = log, tail  # the log's path, its last lines before the error
        self.exit_code = exit_code


class EngineDied(Exception):
    """The engine core died or stalled while generating. `unfinished`: the keys it had not
    finished, in queue order."""

    def __init__(self, reason: str, unfinished: list[str]):
        super().__init__(reason)
        self.reason, self.unfinished = reason, unfinished


class StartFailed(Exception):
    """vLLM's engine did not start; the message is one sentence from its root cause."""

    exit_code = 2


class EngineFailed(Exception):
    """The engine kept dying after engine.max_restarts restarts; stored items are kept."""

    exit_code = 3

    def __init__(self, reason: str, restarts: int):
        super().__init__(reason)
        self.reason, self.restarts = reason, restarts


class OverBudget(UserError):
    """Errors over prompts.max_error_rate (runner/job/budget.py): at plan time nothing is written;
    at run time the run is failed and what finished stays stored. A sentence like any user
    error, with its own exit code."""

    exit_code = 3


class ServerGone(UserError):
    """The vLLM server a run sends its requests to stopped answering; stored items are kept.
    Not restarted (the runner does not own that server): the user starts it again and reruns."""

    exit_code = 3


class DiskFull(UserError):
    """The store's disk (or quota) is full. What was stored stays (lines are appended whole or
    cut on the next open; files are replaced atomically): free space and rerun."""

    exit_code = 3


def disk_full(e: BaseException, store: object) -> DiskFull | None:
    """A full disk or quota as one sentence naming the store, else None."""
    import errno

    if not isinstance(e, OSError) or e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    what = f" (writing {e.filename})" if e.filename else ""
    return DiskFull(f"No space left on the disk of the store {store}{what}: free some space "
                    "there, or set store.root to another disk, then rerun the same command; "
                    "what was stored is kept.")


# The errors that end a job with one sentence (no traceback); in a sweep, the next job runs.
STOPS = (UserError, RunFailed, EngineFailed, StartFailed)


def exit_code(e: BaseException) -> int:
    """The process's exit code for an error that ends it (a Ctrl-C outside generation too)."""
    return Interrupted.exit_code if isinstance(e, KeyboardInterrupt) else \
        getattr(e, "exit_code", 1)
