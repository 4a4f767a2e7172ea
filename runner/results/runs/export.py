"""A run's records as JSONL, CSV, or the OpenAI Batch API's output file (and, split off,
its error file)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import datetime
from typing import Any

from runner.kinds import kind_of
from runner.results.runs.load import Run, flatten
from runner.store.record import Record

CSV_FIELDS = ("id", "status", "output", "finish_reason", "prompt_tokens", "completion_tokens",
              "expected", "error", "prompt", "images", "tags")


def _epoch(iso: str | None) -> int:
    try:
        return int(datetime.fromisoformat(iso or "").timestamp())
    except ValueError:
        return 0


def _digest(run: Run, r: Record) -> str:
    """What an export's ids are cut from: stable across exports of the run."""
    return hashlib.sha256(f"{run.hash}:{r['key']}".encode()).hexdigest()


def openai_line(run: Run, r: Record) -> dict[str, Any]:
    """One line of the OpenAI Batch API output file; ids are derived, so exports are stable."""
    h = _digest(run, r)
    line: dict[str, Any] = {"id": f"batch_req_{h[:24]}", "custom_id": r.get("id", r["key"])}
    if r.get("status") == "error":
        return line | {"response": None,
                       "error": {"code": "generation_error", "message": str(r.get("error"))}}
    outs = r.get("outputs") or [{"text": r.get("output"), "finish_reason": r.get("finish_reason")}]
    p, c = r.get("prompt_tokens"), r.get("completion_tokens")  # None: the server did not say
    body = {"id": f"chatcmpl-{h[24:48]}", "object": "chat.completion",
            "created": _epoch(r.get("time")), "model": run.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": o["text"]},
                         "logprobs": None, "finish_reason": o["finish_reason"]}
                        for i, o in enumerate(outs)],
            "usage": {"prompt_tokens": p, "completion_tokens": c,
                      "total_tokens": None if p is None or c is None else p + c}}
    return line | {"response": {"status_code": 200, "request_id": f"req_{h[48:64]}",
                                "body": body}, "error": None}


# An error of these kinds is the request's fault (HTTP 400, as OpenAI answers a bad request);
# the others are the engine's (500).
REQUEST_KINDS = ("image", "too_many_images", "too_long", "request", "sampling")


def openai_error_line(run: Run, r: Record) -> dict[str, Any]:
    """One line of the OpenAI Batch API error file: the failed request's HTTP response, its
    body an OpenAI error object (the shape OpenAI's error files carry), and `error` null.
    `code` is the record's error kind (docs/errors.md)."""
    h, kind = _digest(run, r), kind_of(r) or "other"
    bad = kind in REQUEST_KINDS
    return {"id": f"batch_req_{h[:24]}", "custom_id": r.get("id", r["key"]),
            "response": {"status_code": 400 if bad else 500, "request_id": f"req_{h[48:64]}",
                         "body": {
                "error": {"message": str(r.get("error")),
                          "type": "invalid_request_error" if bad else "server_error",
                          "param": "messages" if kind in REQUEST_KINDS[:4] else None,
                          "code": kind}}},
            "error": None}


def openai_split(run: Run) -> tuple[str, str]:
    """The OpenAI Batch API's two files: the output file (successes only) and the error
    file."""
    recs = list(run.items.values())
    ok = [openai_line(run, r) for r in recs if r.get("status") != "error"]
    bad = [openai_error_line(run, r) for r in recs if r.get("status") == "error"]
    return _jsonl(ok), _jsonl(bad)


def _jsonl(lines: list[Any]) -> str:
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)


def json_columns(r: Record) -> dict[str, Any]:
    """A JSON-object output as one column per field (`output.<field>`, nested keys dotted;
    lists as JSON); {} for any other output."""
    try:
        v = json.loads(r.get("output") or "")
    except ValueError:
        return {}
    if not isinstance(v, dict):
        return {}
    return {f"output.{k}": json.dumps(x, ensure_ascii=False) if isinstance(x, (list, dict))
            else x for k, x in flatten(v).items() if k}


def _cell(v: Any) -> Any:
    return "" if v is None else json.dumps(v, ensure_ascii=False) \
        if isinstance(v, (dict, list)) else v


def export_text(run: Run, form: str) -> str:
    recs = list(run.items.values())
    if form == "csv":
        cols = [json_columns(r) for r in recs]
        extra = list(dict.fromkeys(k for c in cols for k in c))  # in first-seen order
        buf = io.StringIO()
        w = csv.DictWriter(buf, [*CSV_FIELDS, *extra], extrasaction="ignore",
                           lineterminator="\n")
        w.writeheader()
        for r, c in zip(recs, cols, strict=True):
            w.writerow(r | {"images": ";".join(i["path"] for i in r.get("images") or []),
                            "tags": ";".join(r.get("tags") or []),
                            "expected": _cell(r.get("expected"))} | c)
        return buf.getvalue()
    return _jsonl(recs if form == "jsonl" else [openai_line(run, r) for r in recs])
