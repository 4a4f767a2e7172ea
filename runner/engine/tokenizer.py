"""One Mistral tokenizer per process: vLLM's in-process frontend gets the object the token
plan built (runner/plan/tokens.py) instead of building its own from the same tekken.json.

vLLM's MistralTokenizer.from_pretrained builds transformers' MistralCommonBackend, whose
__init__ calls `MistralTokenizer.from_file(path, mode=test)` through the name
`transformers.tokenization_mistral_common.MistralTokenizer` (runner/engine/contract.py checks
it). While an engine starts, that one name points at `Shared`, whose from_file hands out the
plan's tokenizer for the same file in the same (test) mode, and is put back after: mistral-common's
own class is untouched, so the plan's own build, in its thread, is not redirected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def shared_mistral_tokenizer() -> Iterator[None]:
    try:
        import transformers.tokenization_mistral_common as tmc
        from mistral_common.protocol.instruct.validator import ValidationMode

        real = tmc.MistralTokenizer
    except (ImportError, AttributeError):  # another layout: vLLM builds its own, as before
        yield
        return
    from runner.plan.tokens import mistral_tokenizer

    class Shared:
        @staticmethod
        def from_file(path: str, mode: Any = ValidationMode.test) -> Any:
            if mode == ValidationMode.test and str(path).endswith(".json"):
                return mistral_tokenizer(str(path))
            return real.from_file(path, mode=mode)

    tmc.MistralTokenizer = Shared
    try:
        yield
    finally:
        tmc.MistralTokenizer = real
