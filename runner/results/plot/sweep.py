"""The sweep chart: the headline metric (accuracy, %) of each point against the swept value,
with its 95 % Wilson interval, one line per combination of the other varying keys; a sweep
over categories (models, sets) as grouped bars. From each point's varying values (runs.json's
overrides, or the config keys that differ between runs) and its metrics.json."""

from __future__ import annotations

from typing import Any

from runner.results.plot.chart import Chart, Panel, Point, Series, pct_wilson

CAPTION = ("accuracy: mean score x 100 (metrics.json); bars: 95 % Wilson interval over the "
           "scored items (conservative for partial scores)")


def values_of(overrides: list[str]) -> dict[str, str]:
    """`["sampling.temperature=0.5", "+x=1"]` -> {"sampling.temperature": "0.5", "x": "1"}."""
    out = {}
    for o in overrides:
        k, eq, v = o.partition("=")
        if eq:
            out[k.lstrip("+~")] = v
    return out


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _varying(points: list[dict[str, str]]) -> list[str]:
    """Keys whose values differ, in first-seen order; a key that splits the points exactly as
    an earlier one does (model.path beside model.name) is left out."""
    keys = list(dict.fromkeys(k for p in points for k in p))
    out, seen = [], set()
    for k in keys:
        vals = [p.get(k) for p in points]
        if len(set(vals)) < 2:
            continue
        firsts: dict[str | None, int] = {}
        split = tuple(firsts.setdefault(v, i) for i, v in enumerate(vals))
        if split not in seen:
            seen.add(split)
            out.append(k)
    return out


def short(keys: list[str]) -> dict[str, str]:
    """Each key's last part, the whole key where two share a last part."""
    last = {k: k.rsplit(".", 1)[-1] for k in keys}
    return {k: k if list(last.values()).count(v) > 1 else v for k, v in last.items()}


def sweep_chart(points: list[tuple[dict[str, str], dict[str, Any], str]]) -> Chart | None:
    """points: (varying values by key, metrics.json, run hash) per point. None when fewer than
    two points have an accuracy or nothing varies."""
    points = [p for p in points if (p[1] or {}).get("accuracy") is not None]
    keys = _varying([v for v, _, _ in points])
    if len(points) < 2 or not keys:
        return None
    name = short(keys)
    x = next((k for k in keys if all(_num(v.get(k)) is not None for v, _, _ in points)), None)
    line = x is not None
    x = x or keys[0]
    groups: dict[str, list[Point]] = {}
    for v, m, h in points:
        label = ", ".join(f"{name[k]}={v.get(k, '-')}" for k in keys if k != x)
        value, lo, hi = pct_wilson(m.get("accuracy"), m.get("scored"))
        at = _num(v[x]) if line else str(v.get(x, "-"))
        groups.setdefault(label, []).append(Point(at, value, lo, hi, m.get("scored"),
                                                  note=f"run {h}"))
    series = [Series(label or "accuracy", sorted(ps, key=lambda p: p.at) if line else ps)
              for label, ps in groups.items()]
    panel = Panel("line" if line else "bars", series, value_label="accuracy (%)",
                  at_label=name[x])
    return Chart("sweep", f"accuracy against {name[x]}", [panel], CAPTION)
