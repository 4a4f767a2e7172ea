"""The report card: per benchmark run, its headline metric with a 95 % interval, n and errors,
and the published figure beside it; for two runs of one benchmark (two models, two
quantizations), the paired delta and the recovery (other / base x 100), each with an interval;
optionally broken down by an item metadata field. `results card` and the sweep print it.

The pure API:
  card(runs, by=None)   {"rows": [...], "pairs": [...], "by": {...}}   (docs/evaluations.md)
  tables(result)        its rich tables

Values are in the published figures' units: percent points for scored benchmarks (a mean score
x 100), the judge's 1-10 for a judged run (MM-MT-Bench). Intervals: right/wrong scores get the
Wilson interval (stats.wilson), scores between 0 and 1 (anls, vqa_match) the percentile bootstrap
of the mean (stats.paired_bootstrap, 10,000 resamples, seed 0); the delta the paired bootstrap over
the items both runs scored (by item id), the recovery its ratio (stats.paired_ratio_bootstrap).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

from rich import box
from rich.table import Table

from runner.results.card.compare import item_scores
from runner.results.card.published import family, figure
from runner.results.runs.load import Run
from runner.results.scoring.stats import paired_bootstrap, paired_ratio_bootstrap, wilson

# A set is benchmark X when its name (prompts.name), lowercased without punctuation, is one of:
BENCHMARKS = {"mmmu": "mmmu", "mathvista": "mathvista", "chartqa": "chartqa",
              "docvqa": "docvqa", "vqav2": "vqav2", "mmmtbench": "mm_mt_bench"}
NONE = "(none)"  # the --by group of items without that metadata field


def benchmark_of(run: Run) -> str:
    p = run.config.get("prompts") or {}
    name = str(p.get("name") or run.manifest.get("prompts") or "?") if isinstance(p, dict) \
        else str(run.manifest.get("prompts") or "?")
    return BENCHMARKS.get(re.sub(r"[^a-z0-9]", "", name.rsplit("/", 1)[-1].lower()), name)


def _model(run: Run) -> tuple[str | None, str | None]:
    """The published family the run's model is (or quantizes), and its quantization."""
    m = run.config.get("model") or {}
    m = m if isinstance(m, dict) else {}
    names = [str(m.get(k) or "") for k in ("hf_repo", "name", "path")] + [run.model]
    return family(names), m.get("quantization")


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100 * x, 2)


def summary(values: list[float]) -> dict[str, Any]:
    """Mean x 100 with its 95 % interval: Wilson for right/wrong scores, else bootstrap."""
    n = len(values)
    if not n:
        return {"value": None, "ci95": None, "interval": None, "n": 0}
    mean = sum(values) / n
    binary = all(v in (0.0, 1.0) for v in values)
    lo, hi = wilson(mean, n) if binary else paired_bootstrap(values)
    return {"value": _pct(mean), "ci95": [_pct(lo), _pct(hi)],
            "interval": "wilson" if binary else "bootstrap", "n": n}


def paired(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """Other (b) against base (a) on the items both scored: the delta of means (points) with
    its paired bootstrap interval, and the recovery % (mean b / mean a x 100) with its own."""
    ids = [i for i in a if i in b]
    if not ids:
        return {"n_paired": 0, "delta": None, "ci95": None, "recovery": None,
                "recovery_ci95": None}
    xa, xb = [a[i] for i in ids], [b[i] for i in ids]
    lo, hi = paired_bootstrap([y - x for x, y in zip(xa, xb, strict=True)])
    ma, mb = sum(xa) / len(ids), sum(xb) / len(ids)
    rci = paired_ratio_bootstrap(xa, xb)
    return {"n_paired": len(ids), "delta": _pct(mb - ma), "ci95": [_pct(lo), _pct(hi)],
            "recovery": _pct(mb / ma) if ma else None,
            "recovery_ci95": [_pct(rci[0]), _pct(rci[1])] if rci else None}


def _scores(run: Run) -> tuple[str | None, dict[str, float], dict[str, dict[str, float]]]:
    """The run's headline scorer (the first of each item's, the most common), each item's
    score by id, and every other metric's scores by id."""
    rows = item_scores(run)
    metric = Counter(r.get("scorer") for r in rows.values()).most_common(1)[0][0] if rows \
        else None
    others: dict[str, dict[str, float]] = defaultdict(dict)
    for i, r in rows.items():
        for name, v in (r.get("metrics") or {}).items():
            if name != r.get("scorer"):
                others[name][i] = v
    return metric, {i: float(r["score"]) for i, r in rows.items()}, dict(others)


def run_row(run: Run) -> dict[str, Any]:
    bench = benchmark_of(run)
    fam, quant = _model(run)
    metric, scores, others = _scores(run)
    row: dict[str, Any] = {"benchmark": bench, "run": run.hash, "model": run.model,
                           "metric": metric, **summary(list(scores.values())),
                           "errors": sum(r.get("status") != "ok" for r in run.items.values()),
                           "other_metrics": {k: _pct(sum(v.values()) / len(v))
                                             for k, v in others.items()}}
    from runner.results.judging.judged import judged_metrics

    judged = judged_metrics(run.path)
    if judged:  # a judged run (MM-MT-Bench): the judge's micro average is its headline, on
        m = judged[0]  # the judge's scale; a scorer's value, if any, stays beside it
        micro = m.get("micro_average") or {}
        beside = {metric: row["value"]} if scores and metric else {}
        row |= {"metric": f"judge {(m.get('judge') or {}).get('name')}: micro average",
                "value": micro.get("mean"), "ci95": micro.get("ci95"),
                "interval": "bootstrap", "n": m.get("rated", 0),
                "errors": row["errors"] + m.get("error", 0) + m.get("unrated", 0),
                "other_metrics": {"macro average": (m.get("macro_average") or {}).get("mean"),
                                  **beside, **row["other_metrics"]}}
    pub = figure(fam, bench)
    row["published"] = None if pub is None else {
        "value": pub["value"], "label": pub["label"], "model": fam, "source": pub["source"],
        **({"note": f"published for the unquantized model ({quant} here)"} if quant else {})}
    row["vs_published"] = (round(row["value"] - pub["value"], 2)
                           if pub and row["value"] is not None else None)
    return row


def _groups(run: Run, scores: dict[str, float], field: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for i, v in scores.items():
        g = ((run.items.get(i) or {}).get("metadata") or {}).get(field)
        out[NONE if g is None else str(g)][i] = v
    return dict(sorted(out.items()))


def card(runs: list[Run], by: str | None = None) -> dict[str, Any]:
    """The card of these runs: a row per run; per benchmark run by two runs or more, the first
    (in the order given) against each other; with `by`, the same per metadata value."""
    rows = [run_row(r) for r in runs]
    scores = {r.hash: _scores(r)[1] for r in runs}
    bench: dict[str, list[Run]] = defaultdict(list)
    for r, row in zip(runs, rows, strict=True):
        bench[row["benchmark"]].append(r)
    pairs = []
    for b, rs in bench.items():
        scored = [r for r in rs if scores[r.hash]]
        for other in scored[1:]:
            pairs.append({"benchmark": b, "base": scored[0].hash, "other": other.hash,
                          **paired(scores[scored[0].hash], scores[other.hash])})
    result: dict[str, Any] = {"rows": rows, "pairs": pairs}
    if by:
        grows, gpairs = [], []
        for r, row in zip(runs, rows, strict=True):
            for g, s in _groups(r, scores[r.hash], by).items():
                grows.append({"benchmark": row["benchmark"], "run": r.hash, "group": g,
                              **summary(list(s.values()))})
        for p in pairs:
            base = next(r for r in runs if r.hash == p["base"])
            other = scores[p["other"]]
            for g, s in _groups(base, scores[p["base"]], by).items():
                if any(i in other for i in s):  # groups with paired items only
                    gpairs.append({"benchmark": p["benchmark"], "base": p["base"],
                                   "other": p["other"], "group": g,
                                   **paired(s, {i: other[i] for i in s if i in other})})
        result["by"] = {"field": by, "rows": grows, "pairs": gpairs}
    return result


# --- rendering ------------------------------------------------------------------------------


def _iv(value: float | None, ci: list[float | None] | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if not ci or ci[0] is None:
        return f"{value:.2f}{unit}"
    return f"{value:.2f}{unit} [{ci[0]:.2f}, {ci[1]:.2f}]"


SHORT = {"explicit_prompt_relaxed_correctness": "explicit relaxed",
         "anywhere_in_answer_relaxed_correctness": "anywhere relaxed"}


def _also(r: dict[str, Any]) -> str:
    """The run's other metrics (the harness scores some sets twice), for the caption."""
    more = [f"{SHORT.get(k, k)} {v:.2f}" for k, v in r["other_metrics"].items() if v is not None]
    return f"{r['benchmark']} {r['run'][:8]}: " + ", ".join(more) if more else ""


def _t(title: str, *cols: str) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for c in cols:
        t.add_column(c, overflow="fold", justify="right" if c in ("n", "err") else "left",
                     no_wrap="[95 %]" in c or c in ("n", "err", "run", "base", "other"))
    return t


def tables(result: dict[str, Any]) -> list[Table]:
    t = _t("report card (95 % intervals)", "benchmark", "run", "model", "metric",
           "value [95 %]", "n", "err", "pub.", "Δ pub.")
    for r in result["rows"]:
        pub = r["published"]
        metric = SHORT.get(r["metric"], r["metric"] or "not scored")
        t.add_row(r["benchmark"], r["run"][:8], r["model"], metric,
                  _iv(r["value"], r["ci95"]), str(r["n"]), str(r["errors"]),
                  "-" if pub is None else f"{pub['value']:g}",
                  "-" if r["vs_published"] is None else f"{r['vs_published']:+.2f}")
    out = [t]
    sources = {f"{p['model']}: {p['source']}" for r in result["rows"] if (p := r["published"])}
    notes = [x for r in result["rows"] if (x := _also(r))]
    notes = (["also: " + "; ".join(notes)] if notes else []) + \
        (["published (pub.): " + "; ".join(sorted(sources))] if sources else [])
    if notes:
        t.caption, t.caption_justify = "\n".join(notes), "left"
    if result["pairs"]:
        p = _t("paired: other against base on the items both scored", "benchmark", "base",
               "other", "paired", "Δ points [95 %]", "recovery % [95 %]")
        for x in result["pairs"]:
            p.add_row(x["benchmark"], x["base"][:8], x["other"][:8], str(x["n_paired"]),
                      _iv(x["delta"], x["ci95"]), _iv(x["recovery"], x["recovery_ci95"]))
        out.append(p)
    if "by" in result:
        f = result["by"]["field"]
        g = _t(f"by {f}", "benchmark", "run", f, "value [95 %]", "n")
        for x in result["by"]["rows"]:
            g.add_row(x["benchmark"], x["run"][:8], x["group"], _iv(x["value"], x["ci95"]),
                      str(x["n"]))
        out.append(g)
        if result["by"]["pairs"]:
            gp = _t(f"paired by {f}", "benchmark", "other", f, "paired", "Δ points [95 %]",
                    "recovery % [95 %]")
            for x in result["by"]["pairs"]:
                gp.add_row(x["benchmark"], x["other"][:8], x["group"], str(x["n_paired"]),
                           _iv(x["delta"], x["ci95"]), _iv(x["recovery"], x["recovery_ci95"]))
            out.append(gp)
    return out
