"""What a chart shows, as plain data: panels of series of points, each point with its
interval and n. The chart modules (sweep, card, breakdown) build it; draw.py draws it; the
report and `results plot` read the numbers back from it (the SVG's <title>s and data-*)."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.results.scoring.stats import wilson


@dataclass
class Point:
    at: float | str  # the x value (a line) or the category (bars, rows)
    value: float | None
    lo: float | None = None  # its 95 % interval, in the value's units
    hi: float | None = None
    n: int | None = None  # what the value is a mean or count of
    note: str = ""  # shown in the hover text only


@dataclass
class Series:
    label: str
    points: list[Point]


@dataclass
class Panel:
    """One axes. kind: `line` (numeric x, a line per series), `bars` (categories on x, a bar
    per series in each), `rows` (categories top to bottom, a bar per series), `dots`
    (categories top to bottom, a dot per series). `refs`: a marked reference value per
    category (the published figure); `zero`: draw the zero line (a delta)."""

    kind: str
    series: list[Series]
    title: str = ""
    value_label: str = ""
    at_label: str = ""
    refs: dict[str, float] = field(default_factory=dict)
    ref_label: str = ""
    zero: bool = False
    integer: bool = False  # counts: whole-number ticks


@dataclass
class Chart:
    name: str  # the file name part: sweep, card, by-tag, judge-categories, errors
    title: str
    panels: list[Panel]
    caption: str = ""  # how the intervals are computed, what n is


def pct_wilson(rate: float | None, n: int | None) -> tuple[float | None, float | None,
                                                           float | None]:
    """A rate as percent with its 95 % Wilson interval over n (None where there is none)."""
    if rate is None:
        return None, None, None
    if not n:
        return round(100 * rate, 2), None, None
    lo, hi = wilson(rate, n)
    return round(100 * rate, 2), round(100 * lo, 2), round(100 * hi, 2)
