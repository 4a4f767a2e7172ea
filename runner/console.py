"""The runner's one console (rich, on stderr: stdout stays free for data), shared by every
stage that prints."""

from rich.console import Console

console = Console(stderr=True)
