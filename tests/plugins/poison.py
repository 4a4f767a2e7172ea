"""A test-only vLLM logits processor that kills the engine core process when a request whose
prompt holds the token ids in $POISON_IDS joins the batch: a real "poison item".

Used through engine.extra.logits_processors=[poison:Poison] with this folder on PYTHONPATH
(the engine core is a spawned process: it imports this module itself)."""

from __future__ import annotations

import os

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor


def _holds(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


class Poison(LogitsProcessor):
    def __init__(self, vllm_config, device, is_pin_memory) -> None:  # noqa: ANN001
        self.ids = [int(x) for x in os.environ["POISON_IDS"].split(",")]

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        for _, _, prompt_ids, _ in (batch_update.added if batch_update else ()):
            if prompt_ids and _holds(list(prompt_ids), self.ids):
                os._exit(66)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits
