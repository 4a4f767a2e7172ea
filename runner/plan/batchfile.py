"""`dry_run_requests=FILE`: the OpenAI batch *input* file of what a run would send, one line a
request: custom_id = the item id; body = the model, the messages (text and image_url parts in
their order, images as data: URLs of the bytes the engine gets) and the sampling (the run's
`sampling` under the set's and the item's overrides). Checkable by hand, and replayable on any
OpenAI-compatible service (docs/evaluations.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from runner.files import atomic_write, data_url
from runner.plan.load import Plan
from runner.plan.sampling import merge


def _inline(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            parts = []
            for p in c:
                if p.get("type") == "image_url":
                    u = p["image_url"]["url"]
                    if u.startswith("file://"):
                        u = data_url(unquote(urlparse(u).path))
                    p = {"type": "image_url", "image_url": {"url": u}}
                parts.append(p)
            c = parts
        out.append({**m, "content": c})
    return out


def write_requests(path: Path, plan: Plan, run_sampling: dict[str, Any], model: str,
                   explicit: dict[str, Any] | None = None) -> int:
    """Write the file; the number of requests (items with a plan-time error are left out)."""
    n = 0

    def write(fh: IO[bytes]) -> None:
        nonlocal n
        for it in plan.items:
            if it.error:
                continue
            s = merge(run_sampling, it.sampling, explicit)
            s = {k: v for k, v in s.items() if v is not None}
            body = {"model": model, "messages": _inline(it.messages), **s}
            line = {"custom_id": it.id, "method": "POST", "url": "/v1/chat/completions",
                    "body": body}
            fh.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
            n += 1

    atomic_write(Path(path), write)
    return n
