"""The bounded in-flight window, as `vllm run-batch` bounds it: at most `limit` requests are
queued in the engine, the next one as each finishes. So results are stored from the first
finished item on, and memory stays flat at any size of set."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from runner.engine.api import Engine, Failed, Finished, Refused, Tokens
from runner.errors import EngineDied
from runner.job.sink import Sink
from runner.kinds import classify

# Requests queued per event once the engine runs a full batch: one replaces what finished,
# the other grows the buffer towards the window.
GROW = 2
# Requests queued between two steps while the batch fills, on an engine whose submit
# preprocesses images in this thread (Engine.steps): at vLLM's GPU default of 1,024 seqs,
# queueing the batch at once kept the first outputs unread, and unstored, for as long.
CHUNK = 16


def run_window(engine: Engine, keys: list[str],
               request: Callable[[str], tuple[list[dict[str, Any]], dict[str, Any]]],
               sink: Sink, limit: int, stall_timeout_s: float) -> None:
    """Every key's request through `engine`: `request(key)` gives its messages and sampling.
    A death raises EngineDied with what was in flight, then what was never sent."""
    todo = deque(keys)
    batch = max(1, min(limit, engine.max_num_seqs))

    def fill(most: int) -> None:
        sent = 0
        while todo and engine.in_flight() < limit and sent < most:
            k = todo.popleft()
            try:
                engine.submit(k, *request(k))
                sent += 1
            except Refused as e:  # e.g. an image or sampling vLLM refuses
                sink.error(k, str(e), e.kind)

    try:
        # What the engine runs at once first (in chunks between steps, when its submit
        # preprocesses here); the rest of the window, its buffer, grows by GROW per event.
        first = min(batch, CHUNK) if engine.steps else batch
        fill(first)
        while engine.in_flight():
            for ev in engine.events(stall_timeout_s):
                if isinstance(ev, Finished):
                    sink.output(ev)
                elif isinstance(ev, Failed):  # a server refused it or timed it out
                    sink.error(ev.key, ev.reason,
                               classify(ev.reason, ev.kind) if ev.kind == "request" else ev.kind)
                elif isinstance(ev, Tokens):
                    sink.tokens(ev.generated)
                fill(first if engine.in_flight() < batch else GROW)
            fill(first)
    except EngineDied as d:
        raise EngineDied(d.reason, d.unfinished + list(todo)) from None
