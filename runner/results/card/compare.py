"""Run against run, item by item: accuracies with Wilson intervals, and for each pair the
delta with a paired bootstrap interval, the exact McNemar p and the flips.

The pure API (the CLI, the sweep table and the HTML report call it):
  item_scores(run)           id -> its scores.jsonl row (the latest record of each id)
  run_stats(run)             {"run", "n", "accuracy", "ci95"} (+ "samples" when n > 1)
  pair_stats(base, other)    {"base", "other", "n_paired", "delta", "ci95", "mcnemar_p",
                              "right_to_wrong", "wrong_to_right", "flips": {...: [ids]}}
  compare_runs(runs)         {"runs": [...], "pairs": [...]}: the first run against each other
  as_json(result)            the `compare --json` shape (flip ids dropped)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.results.runs.load import Ref, Run, load_run
from runner.results.scoring.score import samples_metrics
from runner.results.scoring.stats import mcnemar_p, paired_bootstrap, wilson
from runner.store.view import folder as view_folder

SIGNIFICANT = 0.05  # the sweep table marks points below it


def item_scores(run: Run) -> dict[str, dict[str, Any]]:
    """Each scored item's scores.jsonl row, by item id (its latest record, as metrics.json
    counts it)."""
    return {i: run.scores[r["key"]] for i, r in run.items.items() if r["key"] in run.scores}


def item_samples(run: Run, item_id: str) -> list[dict[str, Any]]:
    """Every sample of an item (sampling.n > 1; else its one output): text, finish_reason,
    score and correct (None when the item is not scored)."""
    rec = run.items.get(item_id)
    if rec is None or rec.get("status") != "ok":
        return []
    outs = rec.get("outputs") or [{"text": rec.get("output"),
                                   "finish_reason": rec.get("finish_reason")}]
    row = run.scores.get(rec["key"]) or {}
    scores = row.get("samples") or ([row["score"]] if "score" in row else [])
    return [{**o, "score": scores[j] if j < len(scores) else None,
             "correct": scores[j] >= 1.0 if j < len(scores) else None}
            for j, o in enumerate(outs)]


def run_stats(run: Run) -> dict[str, Any]:
    rows = list(item_scores(run).values())
    n = len(rows)
    acc = sum(r["score"] for r in rows) / n if n else None
    out: dict[str, Any] = {"run": run.hash, "n": n, "accuracy": acc,
                           "ci95": list(wilson(acc, n)) if n and acc is not None else None}
    if any("samples" in r for r in rows):
        out["samples"] = samples_metrics(rows)
    return out


def key_scores(run: Run) -> dict[str, dict[str, Any]]:
    """Each scored item's scores.jsonl row by item key: the same messages, images and
    sampling (an id may be a row position, which two sources or orders do not share)."""
    return {r["key"]: run.scores[r["key"]] for r in run.items.values() if r["key"] in run.scores}


def pairing(n_base: int, n_other: int, n_paired: int) -> dict[str, Any]:
    """n of each side beside n_paired, and a warning when the pair leaves items out."""
    out: dict[str, Any] = {"n_base": n_base, "n_other": n_other}
    if n_paired < max(n_base, n_other):
        out["warning"] = (f"paired on {n_paired} items of {n_base} and {n_other}: the others "
                          "differ in messages, images or sampling")
    return out


def pair_stats(base: Run, other: Run) -> dict[str, Any]:
    """Other against base on the items scored in both (by item key). Right/wrong scores: the
    exact McNemar p; scores between 0 and 1 (the json scorer's share of fields): no McNemar,
    the bootstrap interval is the test. Flips are listed by item id."""
    a, b = key_scores(base), key_scores(other)
    keys = [k for k in a if k in b]
    diffs = [b[k]["score"] - a[k]["score"] for k in keys]
    r2w = [a[k]["id"] for k in keys if a[k]["correct"] and not b[k]["correct"]]
    w2r = [a[k]["id"] for k in keys if not a[k]["correct"] and b[k]["correct"]]
    binary = all(x[k]["score"] in (0.0, 1.0) for k in keys for x in (a, b))
    ids = keys
    lo, hi = paired_bootstrap(diffs) if ids else (None, None)
    return {"base": base.hash, "other": other.hash, "n_paired": len(ids),
            **pairing(len(a), len(b), len(ids)),
            "delta": sum(diffs) / len(ids) if ids else None,
            "ci95": [lo, hi] if ids else None,
            "mcnemar_p": mcnemar_p(len(r2w), len(w2r)) if ids and binary else None,
            "right_to_wrong": len(r2w), "wrong_to_right": len(w2r),
            "flips": {"right_to_wrong": r2w, "wrong_to_right": w2r}}


def compare_runs(runs: list[Run]) -> dict[str, Any]:
    """Every run's stats; the first run (the base) against each of the others."""
    return {"runs": [run_stats(r) for r in runs],
            "pairs": [pair_stats(runs[0], r) for r in runs[1:]]}


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    """The documented `compare --json` shape: the pairs without their flip ids."""
    return {"runs": result["runs"],
            "pairs": [{k: v for k, v in p.items() if k != "flips"} for p in result["pairs"]]}


def significant(pair: dict[str, Any]) -> bool:
    """p < 0.05 against the base: McNemar's for right/wrong scores; for scores between 0 and
    1, the bootstrap interval leaving out 0."""
    if pair["mcnemar_p"] is not None:
        return pair["mcnemar_p"] < SIGNIFICANT
    ci = pair["ci95"]
    return bool(ci) and (ci[0] > 0 or ci[1] < 0)


def load_scored(ref: Path | Ref) -> Run:
    """A run with its stored scores; a run never scored is one sentence saying what to do."""
    run = load_run(ref)
    top = run.path if run.view is None else view_folder(run.path, run.view.id)
    if not (top / "scores.jsonl").is_file():
        raise UserError(f"Run {run.ref} has no scores.jsonl (no item has an expected answer, "
                        f"or it was never scored): `python -m runner.results score {run.ref}`.")
    return run
