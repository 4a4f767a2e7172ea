"""One fake-run builder for the offline readers' tests (results CLI, scoring, HTML report):
run folders written with the store's own helpers, as a finished job leaves them. No engine."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.store.rundir import RunDir

TIME = "2026-11-20T10:00:00+00:00"


def record(item_id: str, output: str | None = None, *, error: str | None = None,
           **fields: Any) -> dict[str, Any]:
    """A results line as the job writes it: `ok` with `output`, or `error` with the reason.
    `fields` override any key (key, images, expected, tags, tokens, ...)."""
    r: dict[str, Any] = {
        "id": item_id, "key": hashlib.sha256(item_id.encode()).hexdigest(),
        "status": "error" if error else "ok", "prompt": f"What is in {item_id}?",
        "images": [], "expected": None, "tags": [], "metadata": {}, "scorer": None,
        "time": TIME}
    if error:
        r["error"] = error
    else:
        r |= {"output": output, "finish_reason": "stop", "prompt_tokens": 100,
              "completion_tokens": 7}
    return r | fields


def manifest(name: str, records: list[dict], **fields: Any) -> dict[str, Any]:
    """A finished run's manifest, counts and tokens taken from the records."""
    ok = [r for r in records if r["status"] == "ok"]
    return {
        "hash": name, "created": TIME, "started": TIME, "finished": TIME, "status": "complete",
        "model": "pixtral-tiny", "prompts": "sample", "overrides": [],
        "counts": {"planned": len(records), "stored": len(records), "computed": len(records),
                   "errors": len(records) - len(ok)},
        "tokens": {"prompt": sum(r.get("prompt_tokens", 0) for r in ok),
                   "completion": sum(r.get("completion_tokens", 0) for r in ok)},
        "timings": {"engine_start_s": 30.0, "generate_s": 2.0, "total_s": 33.0},
        "throughput": {"completion_tokens_per_s": 3.5 * len(ok), "items_per_s": 1.0},
        "versions": {"runner": "pixtral-runner 0.1.0", "python": "3.11.7"}} | fields


def write_run(root: Path, name: str, records: list[dict], *,
              config: DictConfig | dict | None = None, overrides: list[str] | None = None,
              metrics: dict | None = None, torn: bool = False, **manifest_fields: Any) -> Path:
    """<root>/<name>/ with config.yaml, overrides.yaml, results.jsonl and manifest.json.
    `torn` appends a line cut short, as a kill during a write leaves it."""
    rd = RunDir(root, name)
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(config or {})
    rd.create(cfg, list(overrides or []))
    w = rd.writer(16, 2.0)
    for r in records:
        w.write(r)
    w.close()
    if torn:
        with open(rd.results, "a") as f:
            f.write('{"id": "torn", "ke')
    rd.write_manifest(manifest(name, records, overrides=list(overrides or []),
                               **manifest_fields))
    if metrics is not None:
        (rd.path / "metrics.json").write_text(json.dumps(metrics))
    return rd.path
