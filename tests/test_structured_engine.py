"""Structured outputs and per-request sampling through the real vLLM engine (CPU build) on the
tiny Pixtral, on the session's shared engine (conftest `real`), two runs:

- prompts/receipts: a JSON schema (a file, set-level), and per-item choice, regex and
  unconstrained overrides with their own max_tokens;
- prompts/receipts/batch.jsonl: an OpenAI batch file with max_tokens 7, 9, max_completion_tokens
  5, a response_format json_schema, and two body fields the runner cannot honor.

The JSON route on CPU with random weights: the engine's
structured_outputs_config={backend: xgrammar, disable_any_whitespace: true} (conftest ROUTE, an
argument of the shared engine) and a bounded schema (README, "Extraction with a schema").
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from conftest import ROOT

pytestmark = pytest.mark.engine

SCHEMA = json.loads((ROOT / "prompts" / "receipts" / "schema.json").read_text())


def by_id(d: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (d / "results.jsonl").read_text().splitlines())}


@pytest.fixture(scope="session")
def sweep(real) -> tuple[dict[str, Path], str]:
    """The two runs (by set name) and what they printed."""
    runs, out = {}, ""
    for name in ("receipts", "receipts/batch"):
        d, s, text = real.run(f"prompts.name={name}")
        assert s.status == "complete", text
        runs[json.loads((d / "manifest.json").read_text())["prompts"]] = d
        out += text
    assert set(runs) == {"receipts", "batch"}
    return runs, out


def satisfied(so: dict, text: str) -> bool:
    if "choice" in so:
        return text in so["choice"]
    if "regex" in so:
        return re.fullmatch(so["regex"], text) is not None
    jsonschema.validate(json.loads(text), so["json"])
    return True


def test_constrained_outputs_all_validate(sweep):
    runs, _ = sweep
    rs = by_id(runs["receipts"])
    assert len(rs) == 6 and all(r["status"] == "ok" for r in rs.values())
    kinds = set()
    for r in rs.values():
        so = r["sampling"]["structured_outputs"]
        assert r["completion_tokens"] <= r["sampling"]["max_tokens"], r
        if so:
            kinds |= set(so)
            assert satisfied(so, r["output"]), r
            assert r["finish_reason"] == "stop", r  # the constraint ended it, not max_tokens
    assert kinds == {"json", "choice", "regex"}
    assert rs["receipt_1"]["sampling"]["structured_outputs"]["json"] == SCHEMA
    assert rs["receipt_1_free"]["completion_tokens"] <= 6
    m = json.loads((runs["receipts"] / "metrics.json").read_text())
    assert (m["schema_valid"], m["constrained"]) == (1.0, 5)
    assert set(m["fields"]) == {"merchant", "total", "currency", "items"}
    assert all(f["scored"] == 3 for f in m["fields"].values())


def test_batch_bodies_are_honored_on_the_same_engine(sweep):
    runs, out = sweep
    rs = by_id(runs["batch"])
    limits = {"b-1": 7, "b-2": 9, "b-3": 5, "b-4": 200}
    assert set(rs) == set(limits)
    for i, limit in limits.items():
        assert rs[i]["status"] == "ok" and 0 < rs[i]["completion_tokens"] <= limit, rs[i]
    jsonschema.validate(json.loads(rs["b-4"]["output"]), SCHEMA)
    assert rs["b-2"]["sampling"] == {"max_tokens": 9, "temperature": 0.7, "seed": 1}
    flat = " ".join(out.split())
    assert "body fields not honored" in flat and "logprobs (1 requests)" in flat
    assert flat.count("body fields not honored") == 1
    m = json.loads((runs["batch"] / "manifest.json").read_text())
    assert m["engine"]["reused"] and m["engine"]["starts_in_process"] == 1
