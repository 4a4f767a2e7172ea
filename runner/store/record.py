"""One line of results.jsonl: its schema, the two ways the job writes one, and how every
reader reads and counts them. No heavy imports (the results CLI reads these)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from runner.files import read_jsonl
from runner.kinds import by_kind, kind_of, kinds_text

if TYPE_CHECKING:
    from runner.engine.api import Finished
    from runner.plan.load import Item


class ImageRef(TypedDict):
    path: str  # as written in the set
    sha256: str  # of the original bytes


class StoredSample(TypedDict):
    text: str
    finish_reason: str | None


class _Identity(TypedDict):
    id: str  # the item's id in the set
    key: str  # digest of the item's content: what "already stored" means
    status: Literal["ok", "error"]


class Record(_Identity, total=False):
    """status "ok" carries the output fields, status "error" carries `error`."""

    error: str  # why the item has no output (never sent to the engine, or vLLM refused it)
    error_kind: str  # one of runner.kinds.KINDS; records before it have none (kind_of)
    prompt: str  # the last user turn's text
    images: list[ImageRef]
    output: str  # the first sample
    finish_reason: str | None
    prompt_tokens: int | None  # None: the server did not say (docs/server.md)
    completion_tokens: int | None  # over every sample; None: unknown
    outputs: list[StoredSample]  # every sample, when sampling.n > 1
    expected: str | dict | list | None  # a mapping or list: the `json` scorer's
    tags: list[str]
    metadata: dict[str, Any]
    scorer: str | list[str] | None  # a list: several metrics, the first is the score
    # the item's sampling override (its set's and its own, over the run's config.yaml
    # sampling), when it has one; records before it have none
    sampling: dict[str, Any]
    time: str  # ISO 8601, UTC


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _item_fields(item: Item) -> dict[str, Any]:
    return {"prompt": item.text,
            "images": [{"path": im.path, "sha256": im.sha256} for im in item.images]}


def _tail(item: Item) -> dict[str, Any]:
    over = {"sampling": item.sampling} if item.sampling else {}
    return {"expected": item.expected, "tags": item.tags, "metadata": item.metadata,
            "scorer": item.scorer, **over, "time": now()}


def ok_record(item: Item, out: Finished) -> Record:
    """The record of a request the engine finished."""
    c = out.samples
    r: Record = {"id": item.id, "key": item.key, "status": "ok", **_item_fields(item),
                 "output": c[0].text, "finish_reason": c[0].finish_reason,
                 "prompt_tokens": out.prompt_tokens,
                 "completion_tokens": out.completion_tokens, **_tail(item)}
    if len(c) > 1:
        r["outputs"] = [{"text": x.text, "finish_reason": x.finish_reason} for x in c]
    return r


def error_record(item: Item, reason: str, kind: str) -> Record:
    return {"id": item.id, "key": item.key, "status": "error", "error": reason,
            "error_kind": kind, **_item_fields(item), **_tail(item)}


def result_files(run_dir: Path) -> list[Path]:
    """Every shard's results file (results.jsonl, results.<i>-of-<n>.jsonl)."""
    return sorted(Path(run_dir).glob("results*.jsonl"))


def read_records(run_dir: Path) -> dict[str, Record]:
    """Stored records by item key, all shards merged; the first record of a key wins and a
    torn line is skipped."""
    out: dict[str, Record] = {}
    for f in result_files(run_dir):
        for r in read_jsonl(f):
            if isinstance(r, dict) and "key" in r:
                out.setdefault(r["key"], r)
    return out


def latest_by_id(records: Iterable[Record]) -> dict[str, Record]:
    """One record per item id: the latest (an item edited between invocations has two)."""
    items: dict[str, Record] = {}
    for r in records:
        i = str(r.get("id", r["key"]))
        items.pop(i, None)  # its latest record, in its latest place
        items[i] = r
    return items


@dataclass(frozen=True)
class Counts:
    stored: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    by_kind: dict[str, int]  # errors by kind (runner.kinds), kinds with none left out
    uncounted: int = 0  # outputs whose token counts the server did not give (not in the sums)

    @property
    def errors_label(self) -> str:
        """'3 (image 2 · stall 1)', or '0'."""
        return f"{self.errors} ({kinds_text(self.by_kind)})" if self.by_kind else str(self.errors)


def counts(records: Iterable[Record]) -> Counts:
    """The one place records are counted (index, show, report, metrics, the manifest)."""
    rs = list(records)
    return Counts(len(rs), sum(r.get("status") == "error" for r in rs),
                  sum(r.get("prompt_tokens") or 0 for r in rs),
                  sum(r.get("completion_tokens") or 0 for r in rs), by_kind(map(kind_of, rs)),
                  sum(r.get("status") == "ok" and (r.get("prompt_tokens") is None
                                                   or r.get("completion_tokens") is None)
                      for r in rs))
