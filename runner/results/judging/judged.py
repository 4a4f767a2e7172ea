"""Judged scores of a run, aggregated as mistral-evals aggregates MM-MT-Bench
(eval/tasks/mm_mt_bench.py, MultimodalMTBench.aggregate_metrics): the micro average over every
rated item, the average per category (`metadata.category`) and per turn (`metadata.turn`), and
their macro average (the mean of those category and turn averages together), each with a 95 %
bootstrap interval. An unrated item (no rating after the re-asks) and a judge error are counted
and left out of the means. For `results judge`, `results show`, the report and the card.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.files import atomic_write, read_json, read_jsonl
from runner.results.scoring.stats import RESAMPLES, SEED, paired_bootstrap
from runner.store.record import Record, latest_by_id, read_records


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / "judgements"


def request_hash(jid: str, r: Record) -> str:
    """What fixes the judge's request: the judge, the item (its key covers the conversation and
    the image bytes), the output and the reference."""
    doc = [jid, r["key"], r.get("output"), r.get("expected")]
    return hashlib.sha256(json.dumps(doc, ensure_ascii=False).encode()).hexdigest()[:16]


def read_lines(run_dir: Path, jid: str) -> dict[str, dict[str, Any]]:
    """A judge's lines by request hash, the latest of each (an error line is asked again)."""
    return {x["request"]: x for x in read_jsonl(folder(run_dir) / f"{jid}.jsonl")
            if isinstance(x, dict) and "request" in x}


def _r(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def _mean(xs: list[float]) -> dict[str, Any]:
    lo, hi = paired_bootstrap(xs) if xs else (math.nan, math.nan)
    return {"mean": _r(sum(xs) / len(xs)) if xs else None, "ci95": [_r(lo), _r(hi)],
            "n": len(xs)}


def _macro_interval(rows: list[tuple[float, list[str]]], groups: list[str]
                    ) -> tuple[float | None, float | None]:
    """The 95 % percentile interval of the macro average: items resampled with replacement
    (RESAMPLES times, numpy's PCG64 at SEED), every group average and their mean recomputed;
    a resample missing a group leaves it out of that resample's mean."""
    import numpy as np

    if not rows or not groups:
        return (None, None)
    vals = np.array([v for v, _ in rows])
    member = np.array([[g in gs for g in groups] for _, gs in rows], dtype=float)  # n x G
    rng, n, out = np.random.default_rng(SEED), len(rows), []
    step = max(1, 2_000_000 // n)
    for i in range(0, RESAMPLES, step):
        idx = rng.integers(0, n, (min(step, RESAMPLES - i), n))
        cnt = member[idx].sum(1)  # R x G
        tot = (member * vals[:, None])[idx].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.nanmean(np.where(cnt > 0, tot / cnt, np.nan), axis=1))
    lo, hi = np.percentile(np.concatenate(out), [2.5, 97.5])
    return (_r(lo), _r(hi))


def aggregate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """`items`: per judged item its `status` (rated, unrated, error, missing), `rating`,
    `category` and `turn` (None when the set has none)."""
    rated = [x for x in items if x["status"] == "rated"]
    by_cat: dict[str, list[float]] = defaultdict(list)
    by_turn: dict[str, list[float]] = defaultdict(list)
    rows = []
    for x in rated:
        gs = []
        if x.get("category") is not None:
            by_cat[str(x["category"])].append(x["rating"])
            gs.append(f"c:{x['category']}")
        if x.get("turn") is not None:
            by_turn[str(x["turn"])].append(x["rating"])
            gs.append(f"t:{x['turn']}")
        rows.append((x["rating"], gs))
    cats = {k: _mean(v) for k, v in sorted(by_cat.items())}
    turns = {k: _mean(v) for k, v in sorted(by_turn.items(), key=lambda kv: (len(kv[0]), kv[0]))}
    avgs = [v["mean"] for v in [*cats.values(), *turns.values()]]
    macro = _r(sum(avgs) / len(avgs)) if avgs else None
    micro = _mean([x["rating"] for x in rated])
    count = {s: sum(x["status"] == s for x in items) for s in ("rated", "unrated", "error",
                                                                "missing")}
    return {"items": len(items), **count, "micro_average": micro, "categories": cats,
            "turns": turns,
            "macro_average": {"mean": macro, "ci95": list(_macro_interval(
                rows, [f"c:{k}" for k in cats] + [f"t:{k}" for k in turns]))},
            # the same numbers under mistral-evals' own keys
            "mistral_evals": {"micro_average_score": micro["mean"], "macro_average_score": macro,
                              **{f"{k}_average": v["mean"] for k, v in cats.items()},
                              **{f"{k}_average": v["mean"] for k, v in turns.items()}}}


def judged_items(run_dir: Path, jid: str,
                 records: Iterable[Record] | None = None) -> list[dict[str, Any]]:
    """Every item (of `records`, default the whole folder) with an output and a reference,
    with this judge's line (or `missing`)."""
    lines = read_lines(run_dir, jid)
    out = []
    if records is None:
        records = latest_by_id(read_records(run_dir).values()).values()
    for r in records:
        if r.get("status") != "ok" or r.get("expected") is None:
            continue
        x = lines.get(request_hash(jid, r)) or {"status": "missing", "rating": None}
        meta = r.get("metadata") or {}
        out.append({"id": r["id"], "key": r["key"], "status": x["status"],
                    "rating": x.get("rating"), "category": meta.get("category"),
                    "turn": meta.get("turn"), "asks": x.get("asks", 0),
                    "prompt_tokens": x.get("prompt_tokens", 0),
                    "completion_tokens": x.get("completion_tokens", 0)})
    return out


def judges(run_dir: Path) -> list[dict[str, Any]]:
    """The judge configurations that rated this run (judgements/<id>.json), by id."""
    return [d for f in sorted(folder(run_dir).glob("*.json"))
            if not f.name.endswith(".metrics.json") and (d := read_json(f, {}))]


def aggregates(run_dir: Path, jid: str,
               records: Iterable[Record] | None = None) -> dict[str, Any]:
    """A judge's aggregates over `records` (a view's items; default the whole folder)."""
    items = judged_items(run_dir, jid, records)
    desc = read_json(folder(run_dir) / f"{jid}.json", {})
    return {"judge": {k: desc.get(k) for k in ("id", "name", "model")}, **aggregate(items),
            "cost": {k: sum(x[k] for x in items)
                     for k in ("asks", "prompt_tokens", "completion_tokens")}}


def ratings(run_dir: Path, jid: str, records: Iterable[Record]) -> dict[str, float]:
    """Each rated item's rating by item key (what a judged pair is paired on)."""
    return {x["key"]: float(x["rating"]) for x in judged_items(run_dir, jid, records)
            if x["status"] == "rated"}


def write_aggregates(run_dir: Path, jid: str,
                     records: Iterable[Record] | None = None) -> dict[str, Any]:
    items = judged_items(run_dir, jid, records)
    desc = read_json(folder(run_dir) / f"{jid}.json", {})
    agg = {"judge": {k: desc.get(k) for k in ("id", "name", "model")}, **aggregate(items),
           "cost": {k: sum(x[k] for x in items)
                    for k in ("asks", "prompt_tokens", "completion_tokens")}}
    atomic_write(folder(run_dir) / f"{jid}.metrics.json", json.dumps(agg, indent=2) + "\n")
    return agg


def judgements_by_key(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Record key -> the latest judgement of each judge configuration (for show and report)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in sorted(folder(run_dir).glob("*.jsonl")):
        desc = read_json(f.with_suffix(".json"), {})
        latest: dict[str, dict[str, Any]] = {}
        for x in read_lines(run_dir, f.stem).values():
            latest[x["key"]] = x
        for k, x in latest.items():
            out[k].append(x | {"judge_name": desc.get("name") or f.stem})
    return out


def judged_metrics(run_dir: Path, records: Iterable[Record] | None = None
                   ) -> list[dict[str, Any]]:
    """Every judge configuration's aggregates over `records` (a view's items; default the
    whole folder), by judge id: what `results show` and the report print."""
    rs = None if records is None else list(records)
    return [aggregates(run_dir, d["id"], rs) for d in judges(run_dir) if d.get("id")]
