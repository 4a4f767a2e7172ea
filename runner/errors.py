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

    def __init__(self, message: str, log: object, tail: list[str]):
        super().__init__(message)
        self.log, self.tail = log, tail  # the log's path, its last lines before the error
