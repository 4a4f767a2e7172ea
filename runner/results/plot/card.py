"""The card chart, from the card's result (runner.results.card.card.card): a panel per
benchmark with each run's value and 95 % interval and the published figure marked, then a
panel of the paired deltas with theirs. Reads the result's documented fields only and ignores
any others (the card gains fields; docs/evaluations.md)."""

from __future__ import annotations

from typing import Any

from runner.results.plot.chart import Chart, Panel, Point, Series

CAPTION = ("dots: each run's value with its 95 % interval (Wilson for right/wrong scores, "
           "bootstrap otherwise); ◇ the published figure; Δ: other minus base on the items "
           "both scored, 95 % paired bootstrap interval")


def run_label(row: dict[str, Any]) -> str:
    return f"{row.get('model') or '?'} {str(row.get('run') or '')[:6]}"


def _ci(x: dict[str, Any]) -> tuple[float | None, float | None]:
    ci = x.get("ci95") or [None, None]
    return ci[0], ci[1]


def card_chart(result: dict[str, Any]) -> Chart | None:
    rows = [r for r in result.get("rows") or [] if r.get("value") is not None]
    if not rows:
        return None
    panels = []
    for bench in dict.fromkeys(r["benchmark"] for r in rows):
        mine = [r for r in rows if r["benchmark"] == bench]
        # a subset, or another judge, is not comparable with the published figure: said so
        pts = [Point(run_label(r), r["value"], *_ci(r), r.get("n"),
                     note=f"{r.get('metric') or ''}, {r.get('errors', 0)} errors"
                     + (f"; † {r['published']['note']}" if isinstance(r.get("published"), dict)
                        and r["published"].get("note") else ""))
               for r in mine]
        refs = {run_label(r): r["published"]["value"] for r in mine
                if isinstance(r.get("published"), dict) and r["published"].get("value")
                is not None}
        judged = any(str(r.get("metric") or "").startswith("judge") for r in mine)
        pub = set(refs.values())
        title = f"{bench} (◇ published {pub.pop():g})" if len(pub) == 1 else bench
        panels.append(Panel("dots", [Series(bench, pts)], title=title,
                            value_label="judge score (1-10)" if judged else "score (%)",
                            refs=refs, ref_label="published"))
    label = {r.get("run"): run_label(r) for r in rows}
    deltas = [Point(f"{p['benchmark']}: {label.get(p.get('other'), p.get('other'))}",
                    p["delta"], *_ci(p), p.get("n_paired"),
                    note=f"vs {label.get(p.get('base'), p.get('base'))}")
              for p in result.get("pairs") or [] if p.get("delta") is not None]
    if deltas:
        panels.append(Panel("dots", [Series("Δ", deltas)], title="paired Δ vs base",
                            value_label="Δ (points)", zero=True))
    return Chart("card", "report card", panels, CAPTION)
