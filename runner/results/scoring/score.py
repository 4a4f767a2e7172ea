"""Scoring a stored run: per-run scores.jsonl and metrics.json (the scorers: scorers.py).

Runs on results.jsonl alone (no vLLM, no torch), so changing a scorer never regenerates.
Each item's scorer is the record's or the set item's `scorer`, else the set's top-level
`scorer:`, else `exact`. A scorer may be a list of scorers (the harness scores MMMU with two
metrics): the first is the item's `score`, each one's is in the row's `metrics`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.files import atomic_write, read_json, read_yaml
from runner.results.scoring.scorers import DEFAULT_SCORER, Score, normalize, score_output
from runner.results.scoring.stats import majority, pass_at_k
from runner.store.record import Record, counts, latest_by_id, read_records
from runner.store.view import View, read_view
from runner.store.view import folder as view_folder

# --- a run ----------------------------------------------------------------------------------


def set_file_of(run_dir: Path) -> Path | None:
    """The prompt set a run used, from its config.yaml (prompts.root / prompts.name, relative
    to the current directory), found the way the planner finds it."""
    p = read_yaml(run_dir / "config.yaml", {}).get("prompts")
    if not isinstance(p, dict) or "name" not in p:
        return None
    name, root = str(p["name"]), str(p.get("root") or "prompts")
    try:
        from runner.plan.load import find_set

        return find_set(name, root)
    except Exception:  # noqa: BLE001 - an unknown set: score without it
        return None


@dataclass
class SetMeta:
    scorer: str | None = None  # the set's `scorer:`
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> scorer, metadata
    root: Path | None = None  # where the set's image paths resolve


def read_set_meta(set_file: Path | None) -> SetMeta:
    """Scorers, metadata and image root of a set, with the planner's reader (every set
    format); plain YAML items if that reader is unavailable or refuses the file."""
    if set_file is None:
        return SetMeta()
    f = Path(set_file)
    try:
        from runner.plan.sources import read_set

        info, specs = read_set(f)
        items = {s.id: {"scorer": s.scorer, "metadata": s.metadata} for s in specs}
        return SetMeta(info.scorer, items, info.root)
    except Exception:  # noqa: BLE001 - older planner or an edited set file: read it as YAML
        pass
    try:
        doc = yaml.safe_load(f.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        print(f"warning: {f}: {e}; scoring without the set file", file=sys.stderr)
        return SetMeta()
    if not isinstance(doc, dict):
        return SetMeta(root=f.parent)
    items = {str(i["id"]): i for i in doc.get("items") or [] if isinstance(i, dict) and "id" in i}
    return SetMeta(doc.get("scorer"), items, (f.parent / str(doc.get("root", "."))).resolve())


SCORING = Path(__file__).parent  # every module that computes a score lives here


def scoring_code() -> str:
    """Digest of the scoring code (every module of runner/results/scoring/): stored metrics are
    reused only while it is unchanged, so a fix in a metric rescores every run."""
    h = hashlib.sha256()
    for f in sorted(SCORING.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _up_to_date(run_dir: Path, out: Path, set_file: Path | None) -> dict[str, Any] | None:
    """Stored metrics if the scoring code that made them is this one and they are newer than
    every input (so a cached rerun of a big set skips re-reading it)."""
    try:
        done = min((out / n).stat().st_mtime_ns for n in ("scores.jsonl", "metrics.json"))
        inputs = [*run_dir.glob("results*.jsonl"), run_dir / "manifest.json"]
        if any(p.exists() and p.stat().st_mtime_ns >= done
               for p in inputs + ([Path(set_file)] if set_file else [])):
            return None
    except OSError:
        return None
    stored = read_json(out / "metrics.json", {})
    return stored if stored.get("scoring_code") == scoring_code() else None


def score_run(run_dir: Path, set_file: Path | None = None, *, view: View | None = None,
              force: bool = False) -> dict[str, Any]:
    """Score the records of one view with an expected answer; write its scores.jsonl and
    metrics.json (in views/<id>/, and at the top of the run for its latest view).

    `view`: the run's latest (its manifest's) unless given; a run stored before views has
    none, and every record counts. Without `set_file`, the set named by the run's config.yaml
    is used when it exists (for set-level scorers and choice options). Metrics count each id
    once (its latest record); an error record with an expected answer scores 0. Unless
    `force`, stored metrics newer than the results, the manifest and the set file, made by
    this scoring code, are returned as they are.
    """
    run_dir = Path(run_dir)
    set_file = set_file or set_file_of(run_dir)
    latest = read_view(run_dir)
    view = view or latest
    out = run_dir if view is None else view_folder(run_dir, view.id)
    top = view is None or (latest is not None and latest.id == view.id)
    if not force and (stored := _up_to_date(run_dir, out, set_file)) is not None:
        if top and out != run_dir and read_json(run_dir / "metrics.json", {}) != stored:
            _publish(out, run_dir)
        return stored
    meta_set = read_set_meta(set_file)
    set_scorer, items = meta_set.scorer, meta_set.items
    stored_records = read_records(run_dir)
    records = list(stored_records.values()) if view is None else \
        [stored_records[k] for k in view.keys if k in stored_records]
    n = (read_yaml(run_dir / "config.yaml", {}).get("sampling") or {}).get("n") or 1
    multi = n > 1 or any(r.get("outputs") for r in records)  # sampling.n > 1: every sample
    scores, by_id = [], {}
    for r in records:
        if r.get("expected") is None:
            continue
        item = items.get(str(r["id"]), {})
        specs = r.get("scorer") or item.get("scorer") or set_scorer or DEFAULT_SCORER
        specs = [specs] if isinstance(specs, str) else [str(x) for x in specs]
        spec = specs[0]  # a list of metrics (the harness's): the first is the item's score
        meta = r.get("metadata") or item.get("metadata") or {}
        each = {}
        for sp in specs:
            if r.get("status") != "ok":
                each[sp] = Score(0.0, f"generation error: {r.get('error', 'unknown')}"[:200])
            else:
                each[sp] = _score(sp, r.get("output") or "", r["expected"], meta.get("options"))
        s = each[spec]
        row = {"id": r["id"], "key": r["key"], "score": s.score, "correct": s.correct,
               "scorer": spec, "reason": s.reason}
        if len(specs) > 1:
            row["metrics"] = {sp: x.score for sp, x in each.items()}
        if s.fields is not None:
            row["fields"] = s.fields
        if multi:
            row |= _samples(spec, r, s, meta.get("options"))
        scores.append(row)
        by_id[r["id"]] = (row, r.get("tags") or [])
    atomic_write(out / "scores.jsonl",
                 "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in scores))
    metrics = _metrics(records, list(by_id.values()), run_dir)
    metrics |= schema_metrics(latest_by_id(records).values(), run_dir)
    if multi:
        metrics["samples"] = samples_metrics([row for row, _ in by_id.values()])
    if view is not None:  # what the figures cover: n planned, and how many are not stored yet
        metrics["view"] = {"id": view.id, "planned": view.n, "missing": view.n - len(records),
                           "subset": view.subset}
    metrics["scoring_code"] = scoring_code()
    atomic_write(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if top and out != run_dir:
        _publish(out, run_dir)
    return metrics


def _publish(out: Path, run_dir: Path) -> None:
    """The latest view's scores and metrics as the run's own (the documented layout)."""
    for name in ("scores.jsonl", "metrics.json"):
        atomic_write(run_dir / name, (out / name).read_bytes())


def _score(spec: str, output: str, expected: Any, options: Sequence[str] | None) -> Score:
    try:
        return score_output(spec, output, expected, options)
    except (ValueError, re.error) as e:
        return Score(0.0, f"bad scorer: {e}")


def _samples(spec: str, r: Record, first: Score, options: Sequence[str] | None
             ) -> dict[str, Any]:
    """sampling.n > 1: every sample's score, the majority answer's score (answers compared
    normalized, ties to the first seen) and the agreement (the share giving that answer).
    A generation error has no samples."""
    if r.get("status") != "ok":
        return {"samples": []}
    texts = [o.get("text") or "" for o in r.get("outputs") or []] or [r.get("output") or ""]
    scores = [first.score] + [_score(spec, t, r["expected"], options).score for t in texts[1:]]
    top, agreement = majority([normalize(t) for t in texts])
    return {"samples": scores, "majority": scores[top], "agreement": agreement}


def samples_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Over scored items (sampling.n > 1): `pass@1` and `pass@n` (the unbiased estimator, each
    item with its own number of samples, a sample right when its score is 1), `majority`
    (majority-vote accuracy), `agreement` (mean per-item agreement) and `n` (most samples).
    An item without samples (a generation error) counts as wrong."""
    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    per = [(len(s), sum(x >= 1.0 for x in s)) for s in (r.get("samples") or [] for r in rows)]
    return {"n": max((k for k, _ in per), default=0),
            "pass@1": mean([pass_at_k(k, c, 1) for k, c in per]),
            "pass@n": mean([pass_at_k(k, c, k) for k, c in per]),
            "majority": mean([r.get("majority") or 0.0 for r in rows]),
            "agreement": mean([r["agreement"] for r in rows if "agreement" in r])}


def _metrics(records: list[Record], latest: list[tuple[dict, list[str]]],
             run_dir: Path) -> dict[str, Any]:
    by_tag: dict[str, list[float]] = defaultdict(list)
    by_field: dict[str, list[float]] = defaultdict(list)
    by_metric: dict[str, list[float]] = defaultdict(list)
    for row, tags in latest:
        for sp, v in (row.get("metrics") or {row["scorer"]: row["score"]}).items():
            by_metric[sp].append(v)
        for t in tags:
            by_tag[str(t)].append(row["score"])
        for f, ok in (row.get("fields") or {}).items():
            by_field[f].append(float(ok))
    items = counts(latest_by_id(records).values())  # each id once: its latest record
    manifest = read_json(run_dir / "manifest.json", {})
    n = len(latest)
    acc = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"accuracy": acc([row["score"] for row, _ in latest]), "scored": n,
            "correct": sum(row["correct"] for row, _ in latest),
            "items": items.stored,
            "by_tag": {t: {"accuracy": acc(v), "scored": len(v)}
                       for t, v in sorted(by_tag.items())},
            **({"fields": {f: {"accuracy": acc(v), "scored": len(v)}
                           for f, v in sorted(by_field.items())}} if by_field else {}),
            # each scorer's mean (an item may carry several: the harness's metrics)
            "by_metric": {sp: {"mean": acc(v), "scored": len(v)} for sp, v in by_metric.items()},
            "errors": items.errors, "errors_by_kind": items.by_kind,
            "completion_tokens_per_s": (manifest.get("throughput") or {})
            .get("completion_tokens_per_s")}


# --- constrained runs: does each output satisfy its structured_outputs? --------------------


def satisfies(so: dict[str, Any], text: str) -> bool | None:
    """Whether `text` meets the constraint; None for a kind checked only by the engine
    (grammar, structural_tag)."""
    if so.get("choice") is not None:
        return text in so["choice"]
    if so.get("regex") is not None:
        return re.fullmatch(so["regex"], text) is not None
    if so.get("json") is not None or so.get("json_object"):
        try:
            v = json.loads(text)
        except ValueError:
            return False
        if so.get("json") is None:
            return isinstance(v, dict)
        import jsonschema

        return jsonschema.validators.validator_for(so["json"])(so["json"]).is_valid(v)
    return None


def schema_metrics(records: Any, run_dir: Path) -> dict[str, Any]:
    """`schema_valid`: the share of constrained outputs that satisfy their constraint (the
    run's structured_outputs, or the record's own override), over `constrained` outputs."""
    from runner.errors import UserError
    from runner.plan.sampling import check_structured

    cfg = read_yaml(run_dir / "config.yaml", {}).get("sampling") or {}
    try:
        run_so = check_structured(cfg.get("structured_outputs") or None, "", Path.cwd())
    except UserError:  # a schema file that moved away: the records' own constraints only
        run_so = None
    valid = checked = 0
    for r in records:
        over = r.get("sampling") or {}
        so = over["structured_outputs"] if "structured_outputs" in over else run_so
        if not so or r.get("status") != "ok":
            continue
        ok = satisfies(so, r.get("output") or "")
        if ok is not None:
            checked, valid = checked + 1, valid + ok
    return {"schema_valid": round(valid / checked, 4), "constrained": checked} if checked else {}
