"""The charts (issue 43) as a person sees them: a report of a 3-point temperature sweep and one
of a two-benchmark card, opened in headless Chromium. Each plotted point is read back from
the page (its data-* numbers, its <title>, where it is drawn) and checked against runs.json
and the card's JSON: a point's pixel must be where the axis's own tick labels put its value.
Then `results plot` writes the same charts as files, and nothing else imports matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from browser import Browser
from PIL import Image
from test_card import wilson_roots

import fakes
from conftest import ROOT
from runner.results.card.card import card
from runner.results.cli.main import main
from runner.results.runs.load import load_run

# Per chart: every point's numbers and box, and per panel its axes' ticks (label, position)
READ = """[...document.querySelectorAll('figure.chart')].map((f) => {
  const box = (e) => { const r = e.getBoundingClientRect();
                       return [r.left, r.top, r.right, r.bottom]; };
  const svg = f.querySelector('svg');
  const ticks = (p, axis) => [...p.querySelectorAll(`g[id*="-${axis}tick_"]`)].map((t) => {
    const mark = box(t.querySelector('use'));
    return [t.textContent.trim(), (mark[0] + mark[2]) / 2, (mark[1] + mark[3]) / 2]; });
  return {name: f.dataset.chart, box: box(svg),
    points: [...svg.querySelectorAll('g.pt')].map((g) => ({...g.dataset, box: box(g),
      title: g.firstElementChild.tagName === 'title' ? g.firstElementChild.textContent : null,
      panel: g.closest('g[id*="-panel"]').id.split('-').pop()})),
    panels: Object.fromEntries([...svg.querySelectorAll('g[id*="-panel"]')].map((p) =>
      [p.id.split('-').pop(), {x: ticks(p, 'x'), y: ticks(p, 'y'),
                               title: [...p.querySelectorAll('text')].map((t) => t.textContent)}])),
    texts: [...svg.querySelectorAll('text')].map((t) => [t.textContent, box(t)]),
    table: f.querySelectorAll('table.nums tr').length - 1};
})"""


def number(label: str) -> float:
    return float(label.replace("\u2212", "-"))  # matplotlib's minus sign


def axis(ticks: list[list], k: int):
    """The pixel of a value on an axis, fitted through its numeric tick labels (least
    squares); the ticks themselves must sit on that line to a tenth of a pixel."""
    pts = [(number(t[0]), t[k]) for t in ticks]
    assert len(pts) >= 2, ticks
    n = len(pts)
    mx, my = sum(v for v, _ in pts) / n, sum(p for _, p in pts) / n
    slope = sum((v - mx) * (p - my) for v, p in pts) / sum((v - mx) ** 2 for v, _ in pts)
    at = lambda v: my + slope * (v - mx)  # noqa: E731
    assert all(abs(at(v) - p) < 0.1 for v, p in pts), pts
    return at


def centre(b: list[float]) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def legible(chart: dict) -> None:
    """Every label at least 10 px tall, inside the chart, and no two overlapping."""
    texts = [(t, b) for t, b in chart["texts"] if t.strip()]
    assert texts
    for t, b in texts:
        assert b[3] - b[1] >= 10, (chart["name"], t, b)
        s = chart["box"]
        assert s[0] - 0.5 <= b[0] and b[2] <= s[2] + 0.5 and s[1] - 0.5 <= b[1] \
            and b[3] <= s[3] + 0.5, (chart["name"], t, b, s)
    for i, (t, a) in enumerate(texts):
        for u, b in texts[i + 1:]:
            apart = a[2] <= b[0] + 0.5 or b[2] <= a[0] + 0.5 or a[3] <= b[1] + 0.5 \
                or b[3] <= a[1] + 0.5
            assert apart, (chart["name"], t, u, a, b)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("charts") / "outputs"
    return root, fakes.sweep_store(root), fakes.card_store(root)


def test_sweep_and_card_charts_show_the_stored_values(store, tmp_path: Path) -> None:
    root, sweep, cards = store
    assert main(["--root", str(root), "report", "--sweep", str(sweep),
                 "--out", str(tmp_path / "sweep.html")]) == 0
    assert main(["--root", str(root), "report", *[str(d) for d in cards],
                 "--out", str(tmp_path / "card.html")]) == 0
    with Browser(tmp_path / "profile") as b:
        b.open((tmp_path / "sweep.html").as_uri())
        b.wait("document.body.dataset.firstMs")
        got = {c["name"]: c for c in b.js(READ)}
        b.open((tmp_path / "card.html").as_uri())
        b.wait("document.body.dataset.firstMs")
        got_card = {c["name"]: c for c in b.js(READ)}
    assert list(got) == ["sweep", "by-tag", "judge-categories", "judge-turns", "errors"]
    assert list(got_card) == ["card"]
    for c in [*got.values(), *got_card.values()]:
        legible(c)
        assert c["table"] == len(c["points"])  # the numbers, one click away
        assert all(p["title"] for p in c["points"])  # and one hover away

    # the sweep: one point per runs.json row, at its temperature, its accuracy and Wilson
    # interval, drawn where the axes' tick labels put those numbers
    rows = json.loads((sweep / "runs.json").read_text())
    s = got["sweep"]
    x, y = axis(s["panels"]["panel0"]["x"], 1), axis(s["panels"]["panel0"]["y"], 2)
    assert len(s["points"]) == len(rows) == 3
    for p, row, t in zip(s["points"], rows, fakes.TEMPERATURES, strict=True):
        m = json.loads((Path(row["folder"]) / "metrics.json").read_text())
        assert m == row["metrics"]  # the point's metrics.json is what runs.json recorded
        assert row["overrides"][0] == f"sampling.temperature={t}"
        assert float(p["at"]) == t and float(p["value"]) == pytest.approx(100 * m["accuracy"])
        assert [float(p["lo"]), float(p["hi"])] == pytest.approx(
            wilson_roots(m["correct"], m["scored"]), abs=0.01)
        assert int(p["n"]) == m["scored"]
        cx, cy = centre(p["box"])
        assert abs(cx - x(t)) < 1 and abs(cy - y(100 * m["accuracy"])) < 1, (p, cx, cy)
        assert p["title"] == (f"accuracy · temperature {t}: {float(p['value']):.4g} "
                              f"[{float(p['lo']):.4g}, {float(p['hi']):.4g}], n={p['n']} "
                              f"(run {row['hash']})")
    assert [round(float(p["value"]), 1) for p in s["points"]] == [80.0, 65.0, 42.5]

    # by tag: sorted by the first point's accuracy, best on top, with n; bar ends on the axis
    t = got["by-tag"]
    first = [p for p in t["points"] if p["series"].endswith(rows[0]["hash"][:6])]
    want = sorted(rows[0]["metrics"]["by_tag"].items(), key=lambda kv: -kv[1]["accuracy"])
    assert [p["at"] for p in first] == [k for k, _ in want]
    assert [float(p["value"]) for p in first] == [100 * v["accuracy"] for _, v in want]
    assert [lab for lab, _, _ in t["panels"]["panel0"]["y"]] == \
        [f"{k} (n={v['scored']})" for k, v in want]
    tops = [centre(p["box"])[1] for p in first]
    assert tops == sorted(tops)  # drawn top to bottom in that order
    x = axis(t["panels"]["panel0"]["x"], 1)
    for p in t["points"]:
        if float(p["value"]) > 0:
            assert abs(p["box"][2] - x(float(p["value"]))) < 1, p  # the bar ends at its value

    # the judge's breakdowns: each run's stored aggregates, sorted by the first run's
    for what in ("categories", "turns"):
        j = got[f"judge-{what}"]
        x = axis(j["panels"]["panel0"]["x"], 1)
        for i, row in enumerate(rows):
            agg = json.loads((Path(row["folder"]) / "judgements" / "j1.metrics.json")
                             .read_text())[what]
            mine = [p for p in j["points"] if p["series"].endswith(row["hash"][:6])]
            assert {p["at"]: (float(p["value"]), [float(p["lo"]), float(p["hi"])], int(p["n"]))
                    for p in mine} == {k: (v["mean"], v["ci95"], v["n"]) for k, v in agg.items()}
            if i == 0:
                assert [p["at"] for p in mine] == sorted(agg, key=lambda k: -agg[k]["mean"])
            for p in mine:
                assert abs(p["box"][2] - x(float(p["value"]))) < 1, p

    # errors: each run's count per kind, from its metrics.json
    e = got["errors"]
    for row in rows:
        mine = {p["at"]: int(float(p["value"])) for p in e["points"]
                if p["series"].endswith(row["hash"][:6])}
        assert {k: v for k, v in mine.items() if v} == row["metrics"]["errors_by_kind"]
    assert e["points"][-1]["series"].endswith(rows[2]["hash"][:6])

    # the card: per benchmark each run's value and interval, the published figure, the deltas
    result = card([load_run(d) for d in cards])
    c = got_card["card"]
    pts = {(p["panel"], p["kind"], p["at"]): p for p in c["points"]}
    panel = {"mmmu": "panel0", "docvqa": "panel1"}
    for r in result["rows"]:
        label = f"{r['model']} {r['run'][:6]}"
        p = pts[(panel[r["benchmark"]], "point", label)]
        assert (float(p["value"]), float(p["lo"]), float(p["hi"]), int(p["n"])) == \
            (r["value"], *r["ci95"], r["n"])
        pub = pts[(panel[r["benchmark"]], "ref", label)]
        assert float(pub["value"]) == r["published"]["value"]
        ax = c["panels"][panel[r["benchmark"]]]
        x = axis(ax["x"], 1)
        row_y = next(py for lab, _, py in ax["y"] if lab == label)
        for q, v in ((p, r["value"]), (pub, r["published"]["value"])):
            cx, cy = centre(q["box"])
            assert abs(cx - x(v)) < 1 and abs(cy - row_y) < 1, (q, v)
    assert [r["value"] for r in result["rows"]] == [50.0, 45.0, 80.0, pytest.approx(73.33)]
    x = axis(c["panels"]["panel2"]["x"], 1)
    assert len(result["pairs"]) == 2
    for pair in result["pairs"]:
        (p,) = [p for p in c["points"] if p["panel"] == "panel2"
                and p["at"].startswith(pair["benchmark"] + ":")]
        assert (float(p["value"]), [float(p["lo"]), float(p["hi"])], int(p["n"])) == \
            (pair["delta"], pair["ci95"], pair["n_paired"])
        assert abs(centre(p["box"])[0] - x(pair["delta"])) < 1
    assert "mmmu (◇ published 52.5)" in c["panels"]["panel0"]["title"]


def test_results_plot_writes_each_chart(store, tmp_path: Path) -> None:
    root, sweep, cards = store
    assert main(["--root", str(root), "plot", "--sweep", str(sweep),
                 "--out", str(tmp_path / "fig.svg")]) == 0
    assert main(["--root", str(root), "plot", "--sweep", str(sweep),
                 "--out", str(tmp_path / "fig.png")]) == 0
    names = ["sweep", "by-tag", "judge-categories", "judge-turns", "errors"]
    for n in names:
        svg = (tmp_path / f"fig-{n}.svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg and "font-size: 7px" in svg
        with Image.open(tmp_path / f"fig-{n}.png") as im:
            assert im.width == 1050  # 3.5 in, one column, at 300 dpi
    assert "accuracy against temperature" in (tmp_path / "fig-sweep.svg").read_text()
    assert main(["--root", str(root), "plot", *[str(d) for d in cards], "--chart", "card",
                 "--out", str(tmp_path / "card.pdf")]) == 0
    assert (tmp_path / "card.pdf").read_bytes().startswith(b"%PDF")
    assert not list(tmp_path.glob("card-*"))  # one chart: the file named


@pytest.mark.parametrize("args, says", [
    (["--out", "fig.jpg"], "name a .svg, .png or .pdf file"),
    (["--out", "fig.svg", "--chart", "card"], "No card chart for these runs; their charts: "
     "sweep, by-tag, judge-categories, judge-turns, errors."),
])
def test_results_plot_errors_are_one_sentence(store, tmp_path: Path, args, says,
                                              capsys) -> None:
    root, sweep, _ = store
    assert main(["--root", str(root), "plot", "--sweep", str(sweep), *args]) == 2
    assert says in " ".join(capsys.readouterr().err.split())


def test_only_drawing_imports_matplotlib(store, tmp_path: Path) -> None:
    """`results --help`, `ls` and `card` never import matplotlib; `plot` does (the control)."""
    root, sweep, cards = store

    def imported(*args: str) -> set[str]:
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner.results",
                            "--root", str(root), *args], cwd=ROOT, text=True,
                           capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        return {x.rsplit("|", 1)[-1].strip().split(".")[0] for x in p.stderr.splitlines()
                if x.startswith("import time:")}

    for args in (["--help"], ["ls"], ["card", *map(str, cards)]):
        assert "matplotlib" not in imported(*args), args
    assert "matplotlib" in imported("plot", "--sweep", str(sweep), "--out",
                                    str(tmp_path / "f.svg"))
    assert (tmp_path / "f-sweep.svg").is_file()


def test_a_sweep_of_two_keys_draws_a_line_per_other_value_and_categories_as_bars() -> None:
    """Points of temperature x seed: a line per seed over temperature; points of model x set:
    grouped bars per model, a bar per set. Values and intervals from each point's metrics."""
    from runner.results.plot.draw import svg
    from runner.results.plot.sweep import sweep_chart, values_of

    def m(correct: int) -> dict:
        return {"accuracy": correct / 20, "scored": 20, "correct": correct}

    pts = [(values_of([f"sampling.temperature={t}", f"sampling.seed={s}", "prompts=x"]),
            m(18 - 4 * k - s), f"h{k}{s}") for k, t in enumerate((0, 0.5, 1)) for s in (0, 1)]
    c = sweep_chart(pts)
    (panel,) = c.panels
    assert panel.kind == "line" and panel.at_label == "temperature"
    assert [s.label for s in panel.series] == ["seed=0", "seed=1"]
    assert [[(p.at, p.value, p.n) for p in s.points] for s in panel.series] == [
        [(0.0, 90.0, 20), (0.5, 70.0, 20), (1.0, 50.0, 20)],
        [(0.0, 85.0, 20), (0.5, 65.0, 20), (1.0, 45.0, 20)]]
    lo, hi = wilson_roots(18, 20)
    assert (panel.series[0].points[0].lo, panel.series[0].points[0].hi) == \
        pytest.approx((lo, hi), abs=0.01)
    drawn = svg(c, "t")
    assert drawn.count('class="pt"') == 6 and drawn.count('data-series="seed=1"') == 3

    cats = [(values_of([f"model={mo}", f"prompts={p}"]), m(10 + k), f"c{k}")
            for k, (mo, p) in enumerate([("a", "s1"), ("a", "s2"), ("b", "s1"), ("b", "s2")])]
    (bars,) = sweep_chart(cats).panels
    assert bars.kind == "bars" and bars.at_label == "model"
    assert [(s.label, [(p.at, p.value) for p in s.points]) for s in bars.series] == [
        ("prompts=s1", [("a", 50.0), ("b", 60.0)]), ("prompts=s2", [("a", 55.0), ("b", 65.0)])]
    assert sweep_chart(cats[:1]) is None  # one point: nothing to plot against


def test_many_tags_keep_the_best_and_the_worst() -> None:
    """40 tags: the 15 best and 15 worst of the first run, best on top, and the caption says
    so; every run keeps the same tags."""
    from runner.results.plot.breakdown import by_tag_chart

    tags = {f"t{i:02d}": {"accuracy": i / 40, "scored": 10} for i in range(40)}
    c = by_tag_chart([("a", {"by_tag": tags}), ("b", {"by_tag": tags})])
    (panel,) = c.panels
    want = [f"t{i:02d}" for i in [*range(39, 24, -1), *range(14, -1, -1)]]
    assert [[p.at for p in s.points] for s in panel.series] == [want, want]
    assert c.caption.endswith("the 15 best and worst of 40 groups")
