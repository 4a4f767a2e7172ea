"""The report's figures: the comparison card (the card's table, when the runs are of several
models) and the charts section: each chart (runner/results/plot/) as inline SVG, with its
caption, its numbers on hover (each point's <title>) and, one click away, as a table."""

from __future__ import annotations

from html import escape
from typing import Any

from runner.results.plot.chart import Chart


def _cell(x: object) -> str:
    return "—" if x is None else escape(f"{x:.4g}" if isinstance(x, float) else str(x))


def numbers(chart: Chart) -> str:
    """The chart's numbers as a table: panel, series, point, value, interval, n."""
    rows = []
    for panel in chart.panels:
        for s in panel.series:
            for p in s.points:
                iv = "—" if p.lo is None else f"{_cell(p.lo)} – {_cell(p.hi)}"
                rows.append(f"<tr><td>{escape(panel.title)}</td><td>{escape(s.label)}</td>"
                            f"<td>{_cell(p.at)}</td><td>{_cell(p.value)}</td><td>{iv}</td>"
                            f"<td>{_cell(p.n)}</td></tr>")
        for c, v in panel.refs.items():
            rows.append(f"<tr><td>{escape(panel.title)}</td><td>{escape(panel.ref_label)}</td>"
                        f"<td>{escape(c)}</td><td>{_cell(v)}</td><td>—</td><td>—</td></tr>")
    head = "<tr><th>panel</th><th>series</th><th>at</th><th>value</th><th>95 %</th>" \
        "<th>n</th></tr>"
    return f"<table class=\"nums\">{head}{''.join(rows)}</table>"


def charts_html(charts: list[Chart]) -> str:
    if not charts:
        return ""
    from runner.results.plot.draw import svg

    figs = [f'<figure class="chart" data-chart="{c.name}">{svg(c, f"c{k}")}'
            f"<figcaption>{escape(c.caption)}<details><summary>numbers</summary>"
            f"{numbers(c)}</details></figcaption></figure>" for k, c in enumerate(charts)]
    return f'<section id="charts">{"".join(figs)}</section>'


def comparison_html(table: dict[str, Any] | None) -> str:
    """The card's comparison table (runner/results/card/card.py: `comparison`, the `table` of
    `results card --json`) as a section: one column per model, one row per benchmark, each
    cell as the terminal's card shows it. Empty for runs of one model."""
    from runner.results.card.card import cell_lines, comparison_notes, comparison_title

    if not table or len(table["models"]) < 2:
        return ""
    ref = table["ref"]
    head = "".join(f'<th data-model="{escape(m)}">{escape(m)}{" (ref)" if m == ref else ""}'
                   "</th>" for m in table["models"])
    rows = "".join(
        f'<tr data-benchmark="{escape(b)}"><th>{escape(b)}</th>' + "".join(
            "<td>" + "".join(f"<div>{escape(x)}</div>" for x in
                             cell_lines(table["cells"][b].get(m))) + "</td>"
            for m in table["models"]) + "</tr>" for b in table["benchmarks"])
    notes = "".join(f"<div>{escape(n)}</div>" for n in comparison_notes(table))
    return (f'<section id="comparison"><table class="nums"><caption>'
            f"{escape(comparison_title(table))}</caption><tr><th>benchmark</th>{head}</tr>"
            f'{rows}</table><div class="notes">{notes}</div></section>')
