"""What a person sees: events of every stage in, lines on the terminal and log files out.

`console` here is the runner's one rich Console (on stderr: stdout stays free for data), shared
by every stage that prints; `display` draws the plan line, the engine start, the progress and
the summary table; `logs` sends the engine's own output to the run's engine.log; `summary` is
the typed summary a job returns.
"""

from rich.console import Console

console = Console(stderr=True)
