"""Test-only vLLM logits processors that act when a request whose prompt holds a marker's
token ids joins the batch:
- `Poison` ($POISON_IDS) kills the engine process: a real "poison item";
- `Gate` ($GATE_IDS) holds the engine until the file $GATE_FILE exists (and says it holds by
  creating $GATE_FILE.held): a point a run cannot pass without the test.

Used through engine.extra.logits_processors=[poison:Poison] (or poison:Gate) with this folder
on PYTHONPATH (vLLM's engine processes are spawned: they import this module themselves)."""

from __future__ import annotations

import os
import time

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor


def _holds(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


class _OnMarker(LogitsProcessor):
    VAR = ""

    def __init__(self, vllm_config, device, is_pin_memory) -> None:  # noqa: ANN001
        self.ids = [int(x) for x in os.environ[self.VAR].split(",")]

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        for _, _, prompt_ids, _ in (batch_update.added if batch_update else ()):
            if prompt_ids and _holds(list(prompt_ids), self.ids):
                self.hit()

    def hit(self) -> None:
        raise NotImplementedError

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


class Poison(_OnMarker):
    VAR = "POISON_IDS"

    def hit(self) -> None:
        os._exit(66)


class Gate(_OnMarker):
    VAR = "GATE_IDS"

    def hit(self) -> None:
        gate = os.environ["GATE_FILE"]
        open(gate + ".held", "w").close()
        while not os.path.exists(gate):
            time.sleep(0.05)
