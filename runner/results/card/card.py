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
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from runner.errors import UserError
from runner.results.card.compare import key_scores, pairing
from runner.results.card.published import family, figure
from runner.results.runs.load import Run
from runner.results.scoring.stats import paired_bootstrap, paired_ratio_bootstrap, wilson

# A set is benchmark X when its name (prompts.name), lowercased without punctuation, is one of:
BENCHMARKS = {"mmmu": "mmmu", "mathvista": "mathvista", "chartqa": "chartqa",
              "docvqa": "docvqa", "vqav2": "vqav2", "mmmtbench": "mm_mt_bench"}
# The benchmarks the harness scores by an LLM judge (harness.yaml: `metrics: []`).
JUDGED = ("mm_mt_bench",)
PUBLISHED_JUDGE = "gpt-4o-2024-05-13"  # mistral-evals' judge of MM-MT-Bench (docs/judges.md)
# The overrides that ask the published judge (conf/judge/mm_mt_bench.yaml says the same).
PUBLISHED_JUDGE_ARGS = ("judge=mm_mt_bench judge.url=https://api.openai.com/v1 "
                        f"judge.model={PUBLISHED_JUDGE} judge.api_key_env=OPENAI_API_KEY")
NONE = "(none)"  # the --by group of items without that metadata field


def benchmark_named(name: str) -> str:
    """A set's name as the card names its benchmark (any other set: its name)."""
    return BENCHMARKS.get(re.sub(r"[^a-z0-9]", "", name.rsplit("/", 1)[-1].lower()), name)


def benchmark_of(run: Run) -> str:
    p = run.config.get("prompts") or {}
    name = str(p.get("name") or run.manifest.get("prompts") or "?") if isinstance(p, dict) \
        else str(run.manifest.get("prompts") or "?")
    return benchmark_named(name)


def judge_command(run: Run) -> str:
    """The command that judges this run with the published judge (docs/judges.md)."""
    import shlex

    root = run.path.parent
    at = "" if root.resolve() == Path("outputs").resolve() else f" --root {shlex.quote(str(root))}"
    return f"python -m runner.results{at} judge {run.ref} {PUBLISHED_JUDGE_ARGS}"


def _model(run: Run) -> tuple[str | None, str | None]:
    """The published family the run's model is (or quantizes), and its quantization."""
    m = _model_cfg(run)
    names = [str(m.get(k) or "") for k in ("hf_repo", "name", "path")] + [run.model]
    return family(names), m.get("quantization")


def _model_cfg(run: Run) -> dict[str, Any]:
    m = run.config.get("model") or {}
    return m if isinstance(m, dict) else {}


def base_of(base: Run, other: Run) -> bool:
    """Whether `other` is a quantization of `base`'s model: its model config's
    `quantized_from` names the base's (hf_repo, name or path's folder), and the base is not
    quantized itself. Only such a pair has a recovery %."""
    mb, mo = _model_cfg(base), _model_cfg(other)
    origin = str(mo.get("quantized_from") or "")
    if not origin or not mo.get("quantization") or mb.get("quantization"):
        return False
    names = {str(mb.get("hf_repo") or ""), str(mb.get("name") or ""),
             str(mb.get("path") or "").rstrip("/").rsplit("/", 1)[-1]} - {""}
    return origin in names or origin.rsplit("/", 1)[-1] in names


def _pct(x: float | None, scale: float = 100) -> float | None:
    return None if x is None else round(scale * x, 2 if scale == 100 else 4)


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


def paired(a: dict[str, float], b: dict[str, float], recovery: bool = True,
           scale: float = 100) -> dict[str, Any]:
    """Other (b) against base (a) on the items both scored (by item key): the delta of means
    (points, or the judge's scale) with its paired bootstrap interval, n of each side and a
    warning when the pair leaves items out; with `recovery` (a quantized model against its
    base) the recovery % (mean b / mean a x 100) with its own."""
    keys = [k for k in a if k in b]
    out: dict[str, Any] = {"n_paired": len(keys), **pairing(len(a), len(b), len(keys))}
    if not keys:
        return out | {"delta": None, "ci95": None, "recovery": None, "recovery_ci95": None}
    xa, xb = [a[k] for k in keys], [b[k] for k in keys]
    lo, hi = paired_bootstrap([y - x for x, y in zip(xa, xb, strict=True)])
    ma, mb = sum(xa) / len(keys), sum(xb) / len(keys)
    out |= {"delta": _pct(mb - ma, scale), "ci95": [_pct(lo, scale), _pct(hi, scale)],
            "recovery": None, "recovery_ci95": None}
    if recovery:
        rci = paired_ratio_bootstrap(xa, xb)
        out |= {"recovery": _pct(mb / ma) if ma else None,
                "recovery_ci95": [_pct(rci[0]), _pct(rci[1])] if rci else None}
        if not ma:  # a quantization of the base, but no ratio to a base that scored nothing
            out["recovery_why"] = "the base scores 0"
    return out


def _scores(run: Run) -> tuple[str | None, dict[str, float], dict[str, dict[str, float]]]:
    """The run's headline scorer (the first of each item's, the most common), each item's
    score by item key, and every other metric's scores by item key."""
    rows = key_scores(run)
    metric = Counter(r.get("scorer") for r in rows.values()).most_common(1)[0][0] if rows \
        else None
    others: dict[str, dict[str, float]] = defaultdict(dict)
    for k, r in rows.items():
        for name, v in (r.get("metrics") or {}).items():
            if name != r.get("scorer"):
                others[name][k] = v
    return metric, {k: float(r["score"]) for k, r in rows.items()}, dict(others)


def pick_judge(run: Run, want: str | None = None) -> dict[str, Any] | None:
    """The judge behind a judged headline, chosen deterministically: `want` (an id or a
    name), else the benchmark's configured judge (conf/judge/<benchmark>.yaml's name), else
    the first by id; None for a run no judge rated."""
    from runner.results.judging.judged import judges

    js = judges(run.path)
    if not js:
        return None
    if want:
        hit = [d for d in js if want in (d.get("id"), d.get("name"))]
        if not hit:
            raise UserError(f"--judge {want}: run {run.hash} was rated by "
                            + ", ".join(f"{d.get('name')} ({d.get('id')})" for d in js) + ".")
        return hit[0]
    named = [d for d in js if d.get("name") == benchmark_of(run)]
    return (named or js)[0]


def _judged(run: Run, want: str | None) -> tuple[dict[str, Any], dict[str, float]] | None:
    """The chosen judge's aggregates over the run's view, and its ratings by item key."""
    from runner.results.judging.judged import aggregates, ratings

    j = pick_judge(run, want)
    if j is None:
        return None
    items = list(run.items.values())
    return aggregates(run.path, j["id"], items), ratings(run.path, j["id"], items)


def run_row(run: Run, judge: str | None = None) -> dict[str, Any]:
    bench = benchmark_of(run)
    fam, quant = _model(run)
    metric, scores, others = _scores(run)
    view = run.view.brief() if run.view else None
    row: dict[str, Any] = {"benchmark": bench, "run": run.hash, "ref": run.ref,
                           "model": run.model, "metric": metric,
                           **summary(list(scores.values())),
                           "errors": sum(r.get("status") != "ok" for r in run.items.values()),
                           "other_metrics": {k: _pct(sum(v.values()) / len(v))
                                             for k, v in others.items()},
                           "view": view, "subset": bool(view and view["subset"])}
    judged = _judged(run, judge)
    if judged:  # a judged run (MM-MT-Bench): the judge's micro average is its headline, on
        m = judged[0]  # the judge's scale; a scorer's value, if any, stays beside it
        micro, j = m.get("micro_average") or {}, m.get("judge") or {}
        beside = {metric: row["value"]} if scores and metric else {}
        which = "the published judge" if j.get("model") == PUBLISHED_JUDGE else \
            f"not the published {PUBLISHED_JUDGE}"
        row |= {"metric": f"judge {j.get('name')} by {j.get('model')} ({which}): micro average",
                "judge": j | {"published": j.get("model") == PUBLISHED_JUDGE},
                "value": micro.get("mean"), "ci95": micro.get("ci95"),
                "interval": "bootstrap", "n": m.get("rated", 0),
                "errors": row["errors"] + m.get("error", 0) + m.get("unrated", 0),
                "other_metrics": {"macro average": (m.get("macro_average") or {}).get("mean"),
                                  **beside, **row["other_metrics"]}}
    elif bench in JUDGED:  # no judge rated it: no figure to set beside the published one
        row |= {"metric": "not judged", "value": None, "ci95": None, "interval": None,
                "n": 0, "judge_command": judge_command(run)}
    pub = figure(fam, bench)
    notes = ([f"published for the unquantized model ({quant} here)"] if quant else []) + \
        ([f"this run is a {'seeded ' * bool(view.get('selection'))}subset ({view['n']} items)"]
         if row["subset"] else [])
    if judged and pub and not row["judge"]["published"]:
        notes.append(f"judged by {row['judge']['model']}, not {PUBLISHED_JUDGE}: not "
                     f"comparable to {pub['value']:g}")
    row["published"] = None if pub is None else {
        "value": pub["value"], "label": pub["label"], "model": fam, "source": pub["source"],
        **({"note": "; ".join(notes)} if notes else {})}
    row["vs_published"] = (round(row["value"] - pub["value"], 2)
                           if pub and row["value"] is not None else None)
    return row


def _groups(run: Run, scores: dict[str, float], field: str) -> dict[str, dict[str, float]]:
    by_key = {r["key"]: r for r in run.items.values()}
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for k, v in scores.items():
        g = ((by_key.get(k) or {}).get("metadata") or {}).get(field)
        out[NONE if g is None else str(g)][k] = v
    return dict(sorted(out.items()))


def card(runs: list[Run], by: str | None = None, judge: str | None = None,
         ref: str | None = None) -> dict[str, Any]:
    """The card of these runs: a row per run (per view: HASH@VIEW); per benchmark run by two
    runs or more, the first (in the order given) against each other, never two views of one
    run (they share their outputs); a judged benchmark paired on the judge's ratings; the
    recovery % only for a quantized model against its base (base_of). With `by`, the same
    per metadata value. `table`: the comparison table (comparison), deltas against `ref`."""
    rows = [run_row(r, judge) for r in runs]
    scores: list[dict[str, float]] = []  # by position: two stores may hold one hash
    scale: list[float] = []
    for r, row in zip(runs, rows, strict=True):
        judged = _judged(r, judge) if row.get("judge") else None
        # not judged: nothing to pair (a judged benchmark never pairs on a scorer's values)
        scores.append(judged[1] if judged else {} if row["metric"] == "not judged"
                      else _scores(r)[1])
        scale.append(1 if judged else 100)
    bench: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        bench[row["benchmark"]].append(i)
    pairs, bases = [], []
    for b, ix in bench.items():
        scored = [i for i in ix if scores[i]]
        for o in scored[1:]:
            base, other = runs[scored[0]], runs[o]
            if other.path == base.path:  # two views of one run: not a comparison
                continue
            bases.append((scored[0], o))
            pairs.append({"benchmark": b, "base": base.hash, "other": other.hash,
                          "base_ref": base.ref, "other_ref": other.ref,
                          **paired(scores[scored[0]], scores[o], base_of(base, other),
                                   scale[o])})
    result: dict[str, Any] = {"rows": rows, "pairs": pairs,
                              "table": comparison(runs, rows, scores, scale, ref)}
    if by:
        grows, gpairs = [], []
        for i, (r, row) in enumerate(zip(runs, rows, strict=True)):
            for g, s in _groups(r, scores[i], by).items():
                grows.append({"benchmark": row["benchmark"], "run": r.hash, "ref": r.ref,
                              "group": g, **summary(list(s.values()))})
        for p, (ib, io) in zip(pairs, bases, strict=True):
            other, rec = scores[io], p["recovery"] is not None
            for g, s in _groups(runs[ib], scores[ib], by).items():
                if any(k in other for k in s):  # groups with paired items only
                    gpairs.append({"benchmark": p["benchmark"], "base": p["base"],
                                   "other": p["other"], "group": g,
                                   **paired(s, {k: other[k] for k in s if k in other}, rec,
                                            scale[io])})
        result["by"] = {"field": by, "rows": grows, "pairs": gpairs}
    return result


def _column(runs: list[Run], rows: list[dict[str, Any]], models: list[str],
            ref: str | None) -> str:
    """The reference column: `ref` names a model (as the card shows it) or a run (a hash
    prefix or HASH@VIEW); default the first model."""
    if not ref:
        return models[0]
    if ref in models:
        return ref
    hit = {row["model"] for r, row in zip(runs, rows, strict=True)
           if r.hash.startswith(ref) or row["ref"] == ref}
    if len(hit) != 1:
        raise UserError(f"--ref {ref} names {'no' if not hit else 'more than one'} column of "
                        f"this card; name a model ({', '.join(models)}) or one run's hash.")
    return hit.pop()


def comparison(runs: list[Run], rows: list[dict[str, Any]], scores: list[dict[str, float]],
               scale: list[float], ref: str | None = None) -> dict[str, Any]:
    """The comparison table: a column per model (in the order given), a row per benchmark;
    each cell the model's first run of it (value, 95 % interval, n, the published figure for
    that model and benchmark), and its paired delta against the `ref` column's run of that
    benchmark on the items both scored (by item key), as the pairs are computed."""
    models = list(dict.fromkeys(str(row["model"]) for row in rows))
    if not models:
        return {"models": [], "ref": None, "benchmarks": [], "cells": {}}
    col = _column(runs, rows, models, ref)
    first: dict[tuple[str, str], int] = {}
    more: Counter[tuple[str, str]] = Counter()
    for i, row in enumerate(rows):
        k = (row["benchmark"], str(row["model"]))
        first.setdefault(k, i)
        more[k] += 1
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in rows))
    cells: dict[str, dict[str, Any]] = {}
    for b in benchmarks:
        base = first.get((b, col))
        cells[b] = {}
        for m in models:
            i = first.get((b, m))
            if i is None:
                continue
            row = rows[i]
            cell = {k: row[k] for k in ("ref", "value", "ci95", "interval", "n", "errors",
                                        "metric", "published", "vs_published")}
            cell["runs"] = more[(b, m)]  # more than one: the first is shown
            if base is not None and i != base and runs[i].path != runs[base].path:
                p = paired(scores[base], scores[i], base_of(runs[base], runs[i]), scale[i])
                cell["vs_ref"] = {k: p.get(k) for k in ("delta", "ci95", "n_paired", "warning",
                                                       "recovery", "recovery_ci95")}
            cells[b][m] = cell
    return {"models": models, "ref": col, "benchmarks": benchmarks, "cells": cells}


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


def _short(ref: str) -> str:
    """HASH@VIEW shortened: 8 digits of the hash, 6 of the view."""
    h, _, v = ref.partition("@")
    return h[:8] + (f"@{v[:6]}" if v else "")


def cell_lines(c: dict[str, Any] | None) -> list[str]:
    """A comparison cell as lines (the terminal's and the report's): value [95 %] n, the
    published figure (†: not comparable as it stands), the paired delta against the ref."""
    if c is None:
        return ["not run"]
    pub, d = c["published"], c.get("vs_ref")
    return [c["metric"] if c["metric"] == "not judged" else
            _iv(c["value"], c["ci95"]) + f" n={c['n']}",
            "pub. -" if not pub else f"pub. {pub['value']:g}" + ("†" if pub.get("note") else ""),
            *([f"Δ {_iv(d['delta'], d['ci95'])} ({d['n_paired']} paired)"]
              if d and d["delta"] is not None else ["Δ - (no items in common)"] if d else [])]


def comparison_notes(table: dict[str, Any]) -> list[str]:
    """The comparison's caption: where the published figures come from, why one is marked
    † (not comparable as it stands: a subset, a quantization, another judge)."""
    pubs = [(b, m, pub) for b, cells in table["cells"].items() for m, c in cells.items()
            if (pub := c["published"])]
    sources = {f"{pub['model']}: {pub['source']}" for _, _, pub in pubs}
    marked = [f"{m} {b}: {pub['note']}" for b, m, pub in pubs if pub.get("note")]
    return ["pub.: published figure, " + ("; ".join(sorted(sources)) if sources
                                          else "none found for these models"),
            *(["† not comparable as it stands: " + "; ".join(marked)] if marked else []),
            "a model and benchmark run twice: its first run is shown"]


def comparison_title(table: dict[str, Any]) -> str:
    return f"comparison (95 % intervals; Δ: paired against {table['ref']})"


def comparison_table(table: dict[str, Any]) -> Table:
    """One column per model, one row per benchmark: value [95 %], the published figure, the
    paired delta against the reference column."""
    ref = table["ref"]
    t = _t(comparison_title(table), "benchmark",
           *[m + (" (ref)" if m == ref else "") for m in table["models"]])
    for b in table["benchmarks"]:
        t.add_row(b, *["\n".join(cell_lines(table["cells"][b].get(m)))
                       for m in table["models"]])
    t.caption, t.caption_justify = "\n".join(comparison_notes(table)), "left"
    return t


def tables(result: dict[str, Any]) -> list[Table]:
    t = _t("report card (95 % intervals)", "benchmark", "run", "model", "metric",
           "value [95 %]", "n", "err", "pub.", "Δ pub.")
    views = Counter(r["run"] for r in result["rows"])  # a hash twice: name its views
    for r in result["rows"]:
        pub = r["published"]
        metric = SHORT.get(r["metric"], r["metric"] or "not scored")
        mark = "†" if pub is not None and pub.get("note") else ""
        t.add_row(r["benchmark"], _short(r["ref"]) if views[r["run"]] > 1 else r["run"][:8],
                  r["model"], metric, _iv(r["value"], r["ci95"]), str(r["n"]), str(r["errors"]),
                  "-" if pub is None else f"{pub['value']:g}{mark}",
                  "-" if r["vs_published"] is None else f"{r['vs_published']:+.2f}{mark}")
    out = [t]
    sources = {f"{p['model']}: {p['source']}" for r in result["rows"] if (p := r["published"])}
    notes = [x for r in result["rows"] if (x := _also(r))]
    marked = [f"{r['benchmark']} {r['run'][:8]}: {r['published']['note']}"
              for r in result["rows"] if r["published"] and r["published"].get("note")]
    unjudged = [f"{r['benchmark']} {r['run'][:8]}: not judged; to judge it: "
                f"{r['judge_command']}" for r in result["rows"] if r.get("judge_command")]
    notes = (["also: " + "; ".join(notes)] if notes else []) + \
        (["published (pub.): " + "; ".join(sorted(sources))] if sources else []) + \
        (["† not comparable as it stands: " + "; ".join(marked)] if marked else []) + unjudged
    if notes:
        t.caption, t.caption_justify = "\n".join(notes), "left"
    if result["pairs"]:
        p = _t("paired: other against base on the items both scored (by item key)",
               "benchmark", "base", "other", "paired", "Δ [95 %]", "recovery % [95 %]")
        warn = [f"{x['benchmark']} {x['other'][:8]}: {x['warning']}"
                for x in result["pairs"] if x.get("warning")]
        for x in result["pairs"]:
            p.add_row(x["benchmark"], _short(x["base_ref"]), _short(x["other_ref"]),
                      f"{x['n_paired']} of {x['n_base']}/{x['n_other']}",
                      _iv(x["delta"], x["ci95"]),
                      _iv(x["recovery"], x["recovery_ci95"]) if x["recovery"] is not None
                      else f"- ({x.get('recovery_why', 'not a quantization of the base')})")
        p.caption = "\n".join(["Δ: points; a judged benchmark on the judge's scale",
                               *warn])
        p.caption_justify = "left"
        out.append(p)
    if len((result.get("table") or {}).get("models") or []) > 1:
        out.append(comparison_table(result["table"]))
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
