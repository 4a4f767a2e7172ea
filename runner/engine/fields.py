"""What the server client sends (docs/server.md, "What is sent"): the OpenAI chat API's
request fields, plus vLLM's own (`top_k`, `min_p`, `min_tokens`, `repetition_penalty`,
`ignore_eos`, `structured_outputs`, and `return_token_ids` for each sample's token count) for
as long as the server accepts them.

A server that refuses one (HTTP 400 or 422 naming it as unknown, the way OpenAI's API and
pydantic-validated servers word it) has it remembered for the run. The request is sent again
without it only when its value asks nothing a server without the field does not do anyway
(NEUTRAL; `return_token_ids` asks for counts only), so the outputs stay those of the config;
any other value is that item's error. A refused request computed nothing, so sending it again
repeats no work.
"""

from __future__ import annotations

import re
from typing import Any

# The request fields of OpenAI's chat completions API (its API reference, "Create chat
# completion") that the client may send.
OPENAI = frozenset({"model", "messages", "n", "temperature", "top_p", "max_tokens",
                    "max_completion_tokens", "seed", "stop", "presence_penalty",
                    "frequency_penalty", "response_format", "logprobs", "top_logprobs",
                    "logit_bias", "stream", "user"})
# vLLM's fields, with the values that a server without the field computes anyway (vLLM's
# defaults, each the absence of its constraint): left out once the server refused the field.
NEUTRAL: dict[str, tuple[Any, ...]] = {"top_k": (0, -1), "min_p": (0.0,), "min_tokens": (0,),
                                       "repetition_penalty": (1.0,), "ignore_eos": (False,)}
COUNTS_ONLY = "return_token_ids"  # asks for each sample's token ids: never changes outputs
# How servers word an unknown field: OpenAI ("Unrecognized request argument supplied: X",
# "Unknown parameter: 'X'"), pydantic ("Extra inputs are not permitted", loc [body, X]).
_UNKNOWN = re.compile(r"unrecogni[sz]ed|unknown|extra|unexpected|not permitted|not allowed|"
                      r"unsupported|not supported", re.IGNORECASE)


def refused(status: int, said: str, sent: dict[str, Any]) -> set[str]:
    """The fields of `sent` outside OpenAI's API that this answer refuses as unknown."""
    if status not in (400, 422) or not _UNKNOWN.search(said):
        return set()
    return {k for k in sent if k not in OPENAI
            and re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", said)}


def droppable(field: str, value: Any) -> bool:
    """Whether leaving `field` out keeps the outputs: its value is what no field means."""
    if field == COUNTS_ONLY:
        return True
    return field in NEUTRAL and not isinstance(value, (list, dict)) and value in NEUTRAL[field]


def without(request: dict[str, Any], gone: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """`request` without the refused fields (`gone`: field -> the server's words), or the
    reason it cannot be sent: a refused field whose value changes the outputs."""
    keep = [k for k in request if k in gone and not droppable(k, request[k])]
    if keep:
        return request, (f"the server does not accept {', '.join(keep)} ({gone[keep[0]]}), "
                         "which this item's sampling sets to "
                         + ", ".join(f"{k}={request[k]!r}" for k in keep)
                         + ": this config's outputs need a server that takes it (vLLM's)")
    return {k: v for k, v in request.items() if k not in gone}, None
