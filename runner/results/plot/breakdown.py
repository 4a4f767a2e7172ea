"""Breakdown charts: the metric per tag (metrics.json's by_tag), per judge category and per
turn (the judge's stored aggregates), sorted by the first run's value, with intervals and n;
and errors by kind (metrics.json's errors_by_kind). Aggregates only."""

from __future__ import annotations

from typing import Any

from runner.results.plot.chart import Chart, Panel, Point, Series, pct_wilson

TAG_CAPTION = "accuracy per tag (metrics.json by_tag); bars: 95 % Wilson interval; n scored"
JUDGE_CAPTION = "the judge's mean rating per group; bars: 95 % bootstrap interval; n rated"


MAX_ROWS = 30  # categories drawn: past it, the best and the worst half each (a chart to read)


def _sorted(series: list[Series]) -> tuple[list[Series], str]:
    """Categories by the first run's value, best first (a missing one last); past MAX_ROWS
    the best and worst MAX_ROWS / 2, and a note saying so."""
    first = {p.at: p.value for p in series[0].points}
    order = sorted(dict.fromkeys(p.at for s in series for p in s.points),
                   key=lambda c: (first.get(c) is None, -(first.get(c) or 0)))
    note = ""
    if len(order) > MAX_ROWS:
        note = f"; the {MAX_ROWS // 2} best and worst of {len(order)} groups"
        order = order[:MAX_ROWS // 2] + order[-(MAX_ROWS // 2):]
    rank = {c: i for i, c in enumerate(order)}
    return [Series(s.label, sorted((p for p in s.points if p.at in rank),
                                   key=lambda p: rank[p.at])) for s in series], note


def by_tag_chart(runs: list[tuple[str, dict[str, Any]]]) -> Chart | None:
    """runs: (label, metrics.json) each."""
    series = []
    for label, m in runs:
        pts = [Point(t, *pct_wilson(v.get("accuracy"), v.get("scored")), v.get("scored"))
               for t, v in (m.get("by_tag") or {}).items() if v.get("accuracy") is not None]
        if pts:
            series.append(Series(label, pts))
    if not series:
        return None
    series, note = _sorted(series)
    return Chart("by-tag", "accuracy by tag",
                 [Panel("rows", series, value_label="accuracy (%)")], TAG_CAPTION + note)


def judge_charts(runs: list[tuple[str, dict[str, Any] | None]]) -> list[Chart]:
    """runs: (label, the judge's aggregates or None) each: per category, then per turn."""
    out = []
    for what, name in (("categories", "category"), ("turns", "turn")):
        series = []
        for label, agg in runs:
            pts = [Point(str(k), v.get("mean"), *(v.get("ci95") or [None, None])[:2], v.get("n"))
                   for k, v in ((agg or {}).get(what) or {}).items() if v.get("mean") is not None]
            if pts:
                series.append(Series(label, pts))
        if series:
            judge = next((a.get("judge") or {}).get("name") for _, a in runs if a) or "judge"
            series, note = _sorted(series)
            out.append(Chart(f"judge-{what}", f"{judge}: mean rating by {name}",
                             [Panel("rows", series, value_label="rating (1-10)")],
                             JUDGE_CAPTION + note))
    return out


def errors_chart(runs: list[tuple[str, dict[str, int]]]) -> Chart | None:
    """runs: (label, errors by kind) each; None when no run has an error."""
    total: dict[str, int] = {}
    for _, by in runs:
        for k, n in by.items():
            total[k] = total.get(k, 0) + n
    if not total:
        return None
    kinds = sorted(total, key=lambda k: -total[k])  # the most frequent on top
    series = [Series(label, [Point(k, by.get(k, 0)) for k in kinds]) for label, by in runs]
    return Chart("errors", "errors by kind",
                 [Panel("rows", series, value_label="failed items", integer=True)],
                 "failed items per kind (runner.kinds), over each run")
