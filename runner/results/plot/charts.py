"""Every chart a set of runs has, from their aggregates: the sweep (runs.json's points, or the
config keys that differ), the card (when a run is of a benchmark), accuracy by tag, the
judge's breakdowns and errors by kind. What the report embeds and `results plot` writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.files import read_json
from runner.results.plot.breakdown import by_tag_chart, errors_chart, judge_charts
from runner.results.plot.card import card_chart
from runner.results.plot.chart import Chart
from runner.results.plot.sweep import sweep_chart, values_of
from runner.results.runs.load import Run, config_diff, flatten


def sweep_points(runs: list[Run], sweep_rows: list[dict[str, Any]] | None
                 ) -> list[tuple[dict[str, str], dict[str, Any], str]]:
    """Per run, its varying values: its overrides in runs.json when the runs are a sweep's,
    else the config keys that differ between the runs; with its metrics.json."""
    listed = {str(r["hash"]) + (f"@{r['view']}" if r.get("view") else ""):
              values_of(r.get("overrides") or [])
              for r in sweep_rows or [] if isinstance(r, dict) and r.get("hash")}
    keys = config_diff([r.config for r in runs])
    out = []
    for r in runs:
        flat = flatten(r.config)
        v = listed.get(r.ref, listed.get(r.hash))  # a point is a view of its run
        if v is None:
            v = {k: str(flat[k]) for k in keys if k in flat}
        out.append((v, r.metrics, r.hash))
    return out


def label(run: Run) -> str:
    return f"{run.model} {run.hash[:6]}"


def card_result(runs: list[Run]) -> dict[str, Any] | None:
    """The card of the runs whose set is a benchmark (as the sweep prints it), else None."""
    from runner.results.card.card import BENCHMARKS, benchmark_of, card

    bench = [r for r in runs if benchmark_of(r) in BENCHMARKS.values()]
    return card(bench) if bench else None


def errors_by_kind(run: Run) -> dict[str, int]:
    by = run.metrics.get("errors_by_kind")
    if by is None:  # an unscored run: the manifest's counts
        by = (run.manifest.get("counts") or {}).get("errors_by_kind") or {}
    return {str(k): int(v) for k, v in by.items() if v}


def charts(runs: list[Run], sweep_rows: list[dict[str, Any]] | None = None,
           card: dict[str, Any] | None = None) -> list[Chart]:
    """`card`: the card's result when the caller has it (else computed for benchmark runs);
    `sweep_rows`: the sweep's runs.json."""
    labels = [label(r) for r in runs]
    card_fig = card_chart(card if card is not None else card_result(runs) or {})
    # runs that are no sweep's: what differs between them is plotted unless the card shows them
    swept = len(runs) > 1 and (sweep_rows is not None or card_fig is None)
    found = [sweep_chart(sweep_points(runs, sweep_rows)) if swept else None, card_fig,
             by_tag_chart([(x, r.metrics) for x, r in zip(labels, runs, strict=True)]),
             *judge_charts([(x, judged(r)) for x, r in zip(labels, runs, strict=True)]),
             errors_chart([(x, errors_by_kind(r)) for x, r in zip(labels, runs, strict=True)])]
    return [c for c in found if c is not None]


def judged(run: Run) -> dict[str, Any] | None:
    """The judge aggregates of the run's view, by the card's judge (card.pick_judge)."""
    from runner.results.card.card import pick_judge
    from runner.results.judging.judged import aggregates

    j = pick_judge(run)
    return aggregates(run.path, j["id"], run.items.values()) if j else None


def sweep_rows_of(sweep_dir: Path | None) -> list[dict[str, Any]] | None:
    return read_json(sweep_dir / "runs.json", None) if sweep_dir else None
