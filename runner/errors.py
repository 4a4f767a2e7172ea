"""Errors a user can cause: one clear sentence, a distinct exit code, no traceback."""


class UserError(Exception):
    """A problem the user can fix (a path, a key, a file); the message says what to do."""

    exit_code = 2


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during generation; finished items are kept."""

    exit_code = 130


class EngineDied(Exception):
    """The engine core died or stalled while generating. `unfinished`: the keys it had not
    finished, in queue order."""

    def __init__(self, reason: str, unfinished: list[str]):
        super().__init__(reason)
        self.reason, self.unfinished = reason, unfinished


class EngineFailed(Exception):
    """The engine kept dying after engine.max_restarts restarts; stored items are kept."""

    exit_code = 3

    def __init__(self, reason: str, restarts: int):
        super().__init__(reason)
        self.reason, self.restarts = reason, restarts
