"""Error kinds: the short fixed list every error record's `error_kind` comes from
(docs/errors.md). No heavy imports: the results CLI reads these.

The code that stores an error names its kind (the plan, the token plan, the engine boundary,
the supervisor). `classify` reads a reason sentence only where no code can say more: a vLLM
refusal of an item (vLLM raises many exception types for bad input) and records stored before
error kinds existed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# name -> what it means; the order is the order of every count by kind
KINDS: dict[str, str] = {
    "image": "an image is missing, unreadable, corrupt, remote while prompts.allow_remote is "
             "false, outside the set's root, or over prompts.max_image_pixels",
    "too_many_images": "more images in one prompt than model.limit_mm_per_prompt allows",
    "too_long": "the prompt does not fit model.max_model_len (with one output token)",
    "request": "the tokenizer or vLLM refused the request for another reason",
    "sampling": "vLLM refused the item's sampling (its set's or its own `sampling:`)",
    "engine_death": "the engine died whenever this item ran, alone (a poison item)",
    "stall": "the engine stopped making progress whenever this item ran, alone",
    "timeout": "a vLLM server gave no answer within engine.request_timeout_s (engine=server)",
    "other": "a record stored before error kinds whose reason matches none of the above",
}
# The reason a stalled engine gives (runner/engine/watchdog.py and fake.py): "no progress for
# N s (engine.stall_timeout_s=T)".
_STALL = re.compile(r"no progress for \d+ s")
_RULES = [  # (kind, pattern), first match wins; the runner's own sentences and vLLM's
    ("stall", _STALL),
    ("engine_death", re.compile(r"^the engine died while generating this item")),
    ("sampling", re.compile(r"^sampling: ")),
    ("request", re.compile(r"^the tokenizer rejects")),
    ("too_many_images", re.compile(r"images in one prompt|may be provided in one prompt|"
                                   r"limit_mm_per_prompt", re.I)),
    ("too_long", re.compile(r"max_model_len|maximum model length|maximum context length",
                            re.I)),
    ("image", re.compile(r"image|base64|could not fetch", re.I)),
]


def classify(reason: str, default: str = "other") -> str:
    """The kind a reason sentence describes, else `default`."""
    for kind, pat in _RULES:
        if pat.search(reason):
            return kind
    return default


def death_kind(reason: str) -> str:
    """A poison item's kind, from why the engine died with it alone."""
    return "stall" if _STALL.search(reason) else "engine_death"


def kind_of(r: Mapping[str, Any]) -> str | None:
    """A record's error kind (None for a record that is not an error): the stored one, or for
    a record stored before error kinds, the one its reason describes."""
    if r.get("status") != "error":
        return None
    k = r.get("error_kind")
    return k if k in KINDS else classify(str(r.get("error") or ""))


def by_kind(kinds: Iterable[str | None]) -> dict[str, int]:
    """Counts by kind, in KINDS order, kinds that did not occur left out."""
    ks = [k for k in kinds if k is not None]
    return {k: n for k in KINDS if (n := ks.count(k))}


def by_kind_order(counts: Mapping[str, int]) -> dict[str, int]:
    """Counts by kind in KINDS order."""
    return {k: counts[k] for k in KINDS if counts.get(k)}


def kinds_text(counts: Mapping[str, int]) -> str:
    """'image 2 · stall 1' (empty when there are none)."""
    return " · ".join(f"{k} {n}" for k, n in counts.items())


def parse_kinds(value: Any, key: str) -> frozenset[str]:
    """A config value naming kinds: true (every kind), false/null/[] (none), a kind, or a
    list of kinds. UserError naming `key` for anything else."""
    from runner.errors import UserError

    if value is True:
        return frozenset(KINDS)
    if value is False or value is None:
        return frozenset()
    try:
        names = [value] if isinstance(value, str) else [str(v) for v in value]
    except TypeError:  # a number, say
        names = [str(value)]
    for v in names:
        if v not in KINDS:
            raise UserError(f"{key}: unknown error kind '{v}'; use true, or a list of "
                            f"{', '.join(KINDS)} (e.g. {key}=[engine_death,stall]).")
    return frozenset(names)
