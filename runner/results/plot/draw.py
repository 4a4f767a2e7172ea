"""Charts drawn with matplotlib (imported here, inside the functions: runs, dry runs, cache
hits and --help never load it). One figure per Chart, one column wide (3.5 in) with 8 pt text,
so a paper prints it at its size. For the report the SVG is made inline-ready: its ids
prefixed (several charts share one page), each plotted point or bar a <g class="pt"> with a
<title> (the hover) and data-* attributes holding its numbers."""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.files import atomic_write
from runner.results.plot.chart import Chart, Panel, Point

WIDTH = 3.5  # inches: one column of a two-column paper
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
         "xtick.labelsize": 7, "ytick.labelsize": 7, "svg.fonttype": "none",
         "svg.hashsalt": "pixtral-runner", "axes.spines.top": False,
         "font.sans-serif": ["DejaVu Sans"],  # matplotlib's own font: the same in every file
         "axes.spines.right": False, "figure.dpi": 100, "savefig.dpi": 300}
FORMATS = ("svg", "png", "pdf")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def hover(series: str, p: Point, at_label: str = "") -> str:
    """A point's numbers as the hover shows them: `seed=1 · temperature 0.5: 65 [49.5, 77.9],
    n=40 (run 1a2b...)`."""
    iv = f" [{_fmt(p.lo)}, {_fmt(p.hi)}]" if p.lo is not None else ""
    n = f", n={p.n}" if p.n is not None else ""
    note = f" ({p.note})" if p.note else ""
    at = f"{at_label} {p.at}" if at_label else str(p.at)
    return f"{series} · {at}: {_fmt(p.value)}{iv}{n}{note}"


class _Marks:
    """The gid of every plotted point and its numbers, for the SVG's titles and data-*."""

    def __init__(self) -> None:
        self.meta: dict[str, dict[str, Any]] = {}

    def add(self, artist: Any, panel: Panel, k: int, series: str, p: Point,
            kind: str = "point") -> None:
        gid = f"pt{len(self.meta)}"
        artist.set_gid(gid)
        self.meta[gid] = {"panel": k, "series": series, "at": p.at, "value": p.value,
                          "lo": p.lo, "hi": p.hi, "n": p.n, "kind": kind,
                          "title": hover(series, p, panel.at_label)}


def _err(pts: list[Point]) -> list[list[float]]:
    return [[(p.value - p.lo) if p.lo is not None else 0.0 for p in pts],
            [(p.hi - p.value) if p.hi is not None else 0.0 for p in pts]]


def _categories(panel: Panel) -> list[str]:
    return list(dict.fromkeys(str(p.at) for s in panel.series for p in s.points))


def _cat_labels(panel: Panel, cats: list[str]) -> list[str]:
    """A category with the n of its first point (the rows charts: n beside the name)."""
    if panel.kind != "rows":
        return cats
    n = {}
    for s in panel.series:
        for p in s.points:
            n.setdefault(str(p.at), p.n)
    return [f"{c} (n={n[c]})" if n.get(c) is not None else c for c in cats]


def _panel(ax: Any, panel: Panel, k: int, marks: _Marks) -> None:
    many = len(panel.series) > 1
    if panel.kind == "line":
        for j, s in enumerate(panel.series):
            pts = [p for p in s.points if p.value is not None]
            xs, ys = [p.at for p in pts], [p.value for p in pts]
            ax.errorbar(xs, ys, yerr=_err(pts), color=f"C{j}", capsize=3, lw=1.2,
                        label=s.label if many else None)
            for p in pts:
                (m,) = ax.plot([p.at], [p.value], "o", color=f"C{j}", ms=4)
                marks.add(m, panel, k, s.label, p)
        ax.set_xlabel(panel.at_label)
        ax.set_ylabel(panel.value_label)
    else:
        cats = _categories(panel)
        pos = {c: i for i, c in enumerate(cats)}
        width = 0.8 / len(panel.series)
        horizontal = panel.kind in ("rows", "dots")
        for j, s in enumerate(panel.series):
            pts = [p for p in s.points if p.value is not None]
            at = [pos[str(p.at)] + (j - (len(panel.series) - 1) / 2) * width for p in pts]
            vs = [p.value for p in pts]
            err = _err(pts) if any(p.lo is not None for p in pts) else None
            if panel.kind == "dots":
                ax.errorbar(vs, at, xerr=err, fmt="none", ecolor=f"C{j}", capsize=3, lw=1.2)
                for p, y in zip(pts, at, strict=True):
                    (m,) = ax.plot([p.value], [y], "o", color=f"C{j}", ms=4,
                                   label=s.label if many and p is pts[0] else None)
                    marks.add(m, panel, k, s.label, p)
                continue
            bar = ax.barh if horizontal else ax.bar
            bars = bar(at, vs, width * 0.9, color=f"C{j}", label=s.label if many else None,
                       **({"xerr" if horizontal else "yerr": err, "capsize": 2,
                           "error_kw": {"lw": 0.8}} if err else {}))
            for rect, p in zip(bars.patches, pts, strict=True):
                marks.add(rect, panel, k, s.label, p, "bar")
        for c, ref in panel.refs.items():
            (m,) = ax.plot([ref], [pos[c]], "D", color="black", mfc="none", ms=5)
            marks.add(m, panel, k, panel.ref_label, Point(c, ref), "ref")
        ticks, labels = list(range(len(cats))), _cat_labels(panel, cats)
        if horizontal:
            ax.set_yticks(ticks, labels)
            ax.invert_yaxis()  # the first (the best, sorted) on top
            ax.set_xlabel(panel.value_label)
            if panel.zero:
                ax.axvline(0, color="0.5", lw=0.8, ls="--")
        else:
            ax.set_xticks(ticks, labels)
            ax.set_ylabel(panel.value_label)
            ax.set_xlabel(panel.at_label)
    if panel.integer:
        from matplotlib.ticker import MaxNLocator

        (ax.xaxis if panel.kind in ("rows", "dots") else ax.yaxis).set_major_locator(
            MaxNLocator(integer=True))
    if panel.title:  # rows: the axes are narrow beside their labels; right-aligned, a long
        # title runs left over the labels' column instead of off the figure
        ax.set_title(panel.title, loc="right" if panel.kind in ("rows", "dots") else "left")


def _height(p: Panel) -> float:
    if p.kind in ("rows", "dots"):
        rows = len(_categories(p)) * max(1, len(p.series) if p.kind == "rows" else 1)
        return 0.75 + 0.2 * rows
    return 2.4


def figure(chart: Chart) -> tuple[Any, _Marks]:
    from matplotlib.figure import Figure

    marks = _Marks()
    heights = [_height(p) for p in chart.panels]
    fig = Figure(figsize=(WIDTH, sum(heights) + 0.3), layout="constrained")
    axes = fig.subplots(len(chart.panels), 1, height_ratios=heights, squeeze=False)[:, 0]
    for k, (ax, panel) in enumerate(zip(axes, chart.panels, strict=True)):
        ax.set_gid(f"panel{k}")
        _panel(ax, panel, k, marks)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # below the axes, never over a bar
        fig.legend(handles, labels, loc="outside lower center", ncols=min(2, len(handles)),
                   frameon=False)
    fig.suptitle(chart.title, x=0.02, ha="left", fontsize=9, fontweight="bold")
    return fig, marks


def _attrs(meta: dict[str, Any]) -> str:
    a = " ".join(f'data-{k}="{html.escape(str(v))}"' for k, v in meta.items()
                 if k != "title" and v is not None)
    return f'class="pt" {a}'


_DIGITS = re.compile(r"(\.\d\d)\d+")


def _coarse(m: re.Match[str]) -> str:
    value = _DIGITS.sub(r"\1", m[2])
    return f' {m[1]}="{value}"'


def svg(chart: Chart, prefix: str) -> str:
    """The chart as an <svg> element for an HTML page: ids prefixed with `prefix`, each point
    a <g class="pt" data-value=... data-lo=... data-hi=... data-n=...> with a <title>."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig, marks = figure(chart)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    # inline in HTML the namespaces are implied, the RDF metadata is noise: no URL stays in
    # the page (the report fetches nothing and names nothing to fetch)
    s = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", s, count=2)
    s = re.sub(r"<metadata>.*?</metadata>\s*", "", s, count=1, flags=re.S)
    s = re.sub(r' transform="rotate\(-0 [^"]*\)"', "", s)  # no-op rotations
    s = re.sub(r"\s*\n\s*", " ", s)  # one line: a third smaller
    s = re.sub(r' (d|x|y)="([^"]*)"', _coarse, s)  # coordinates to 1/100 pt: a quarter
    s = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', s)
    s = s.replace('href="#', f'href="#{prefix}-').replace("url(#", f"url(#{prefix}-")
    for gid, meta in marks.meta.items():
        s = s.replace(f'<g id="{prefix}-{gid}">',
                      f'<g id="{prefix}-{gid}" {_attrs(meta)}><title>'
                      f'{html.escape(meta["title"])}</title>', 1)
    return s.replace("<svg ", f'<svg data-chart="{chart.name}" role="img" '
                     f'aria-label="{html.escape(chart.title)}" ', 1)


def save(chart: Chart, path: Path) -> Path:
    """The chart as a standalone file; the format from the suffix (.svg, .png, .pdf)."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise UserError(f"--out {path}: name a .svg, .png or .pdf file.")
    import matplotlib

    with matplotlib.rc_context(STYLE):
        fig, _ = figure(chart)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: fig.savefig(  # no half-written figure
            f, format=fmt, metadata={"Date": None} if fmt == "svg" else None))
    return path
