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


# --- a store with something to chart (issue 43): a temperature sweep and a card --------------

TEMPERATURES = (0.0, 0.5, 1.0)
SWEEP_RIGHT = (32, 26, 17)  # right answers of 40 at each temperature
SWEEP_ERRORS = ((), ("image",), ("image", "too_long", "too_long"))  # error kinds per point
TAGS = ("chart", "doc", "photo", "table")


def sweep_store(root: Path) -> Path:
    """Three points of a temperature sweep over a 40-item set (exact scorer, four tags,
    SWEEP_RIGHT right answers, SWEEP_ERRORS failed items), scored, with the sweep folder's
    runs.json as the runner writes it. Returns the sweep folder."""
    from runner.results.scoring.score import score_run

    sweep = root / ".sweeps" / "2026-12-08_01-00-00"
    rows = []
    for num, (t, right, errs) in enumerate(zip(TEMPERATURES, SWEEP_RIGHT, SWEEP_ERRORS,
                                               strict=True)):
        recs = []
        for i in range(40):
            fields = {"key": f"t{num}-{i}", "expected": "yes", "scorer": "exact",
                      "tags": [TAGS[i % 4]], "error_kind": None,
                      "metadata": {"category": JUDGE_CATEGORIES[i % 4], "turn": i % 2 + 1}}
            if i >= 40 - len(errs):  # the last items failed, one per kind
                kind = errs[i - (40 - len(errs))]
                recs.append(record(f"q{i}", error=f"{kind} trouble", **fields | {
                    "error_kind": kind}))
            else:  # right answers first, skewed towards the first tags
                order = sorted(range(40), key=lambda j: (j % 4, j))
                recs.append(record(f"q{i}", "yes" if order.index(i) < right else "no",
                                   **fields))
        name = hashlib.sha256(f"sweep-{t}".encode()).hexdigest()[:16]
        cfg = {"model": {"name": "pixtral-tiny"}, "prompts": {"name": "sample"},
               "sampling": {"temperature": t, "max_tokens": 16}}
        d = write_run(root, name, recs, config=cfg,
                      overrides=[f"sampling.temperature={t}"])
        score_run(d)
        judge(d, [10 - 2 * num - i % 3 - (i % 4 == 3) * 2 for i in range(40)])
        rows.append({"num": num, "overrides": [f"sampling.temperature={t}", "prompts=sample"],
                     "hash": name, "folder": str(d), "status": "computed", "items": 40,
                     "metrics": json.loads((d / "metrics.json").read_text())})
    sweep.mkdir(parents=True)
    (sweep / "runs.json").write_text(json.dumps(rows, indent=2))
    return sweep


JUDGE_CATEGORIES = ("charts", "documents", "photos", "tables")


def judge(run_dir: Path, ratings: list[int]) -> dict[str, Any]:
    """A judge's lines for the run, as `results judge` stores them: item q<i> (each stored
    output with a reference) rated ratings[i]; returns the aggregates the judge's own code
    makes of them (also written to judgements/<id>.metrics.json)."""
    from runner.results.judging.judged import folder, request_hash, write_aggregates
    from runner.store.record import latest_by_id, read_records

    recs = [r for r in latest_by_id(read_records(run_dir).values()).values()
            if r.get("status") == "ok" and r.get("expected") is not None]
    folder(run_dir).mkdir(parents=True, exist_ok=True)
    (folder(run_dir) / "j1.json").write_text(json.dumps(
        {"id": "j1", "name": "fake-judge", "model": "judge-model"}))
    (folder(run_dir) / "j1.jsonl").write_text("".join(json.dumps(
        {"id": r["id"], "key": r["key"], "request": request_hash("j1", r), "judge": "j1",
         "status": "rated", "rating": ratings[int(r["id"][1:])]}) + "\n" for r in recs))
    return write_aggregates(run_dir, "j1", recs)


CARD_MODELS = ({"name": "pixtral-12b-2409", "hf_repo": "mistralai/Pixtral-12B-2409"},
               {"name": "pixtral-12b-2409-w4a16", "hf_repo": "mistralai/Pixtral-12B-2409",
                "quantization": "compressed-tensors",
                "quantized_from": "mistralai/Pixtral-12B-2409"})
CARD_RIGHT = {"mmmu": (30, 27), "docvqa": (36, 33)}  # right answers of 60 / 45 per model


def card_store(root: Path) -> list[Path]:
    """Two benchmarks (MMMU, 60 items, relaxed correctness; DocVQA, 45 items, ANLS) run by a
    model and its quantized twin: four scored runs, base first for each benchmark."""
    from runner.results.scoring.score import score_run

    metric = "explicit_prompt_relaxed_correctness"
    out = []
    for bench, n, scorer in (("mmmu", 60, metric), ("docvqa", 45, "anls")):
        for m, right in zip(CARD_MODELS, CARD_RIGHT[bench], strict=True):
            recs = [record(f"{bench}{i}", ("Answer: B" if bench == "mmmu" else "paris")
                           if i < right else ("Answer: C" if bench == "mmmu" else "rome"),
                           key=f"{bench}-{i}", scorer=scorer,  # one item, one key
                           expected="B" if bench == "mmmu" else ["paris"])
                    for i in range(n)]
            name = hashlib.sha256(f"{bench}-{m['name']}".encode()).hexdigest()[:16]
            d = write_run(root, name, recs, config={"prompts": {"name": bench}, "model": m},
                          model=m["name"])
            score_run(d)
            out.append(d)
    return out
