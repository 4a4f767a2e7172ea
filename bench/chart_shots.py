"""Screenshots of the report's charts for docs/report.md, made by the code the tests use: the
fake stores of tests/fakes.py (a 3-point temperature sweep, a two-benchmark card), reports
built by `results report`, each chart cut out of the page as Chromium draws it.

    .venv/bin/python bench/chart_shots.py [--out docs/img]

Writes <out>/chart-<name>.png per chart (sweep, by-tag, judge-categories, judge-turns, errors,
card) and prints each one's path and size."""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from browser import Browser  # noqa: E402

import fakes  # noqa: E402
from runner.results.cli.main import main  # noqa: E402

BOXES = """[...document.querySelectorAll('figure.chart')].map((f) => {
  const r = f.querySelector('svg').getBoundingClientRect();
  return [f.dataset.chart, r.left + scrollX, r.top + scrollY, r.width, r.height]; })"""


def shots(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        root = tmp / "outputs"
        sweep, cards = fakes.sweep_store(root), fakes.card_store(root)
        pages = [tmp / "sweep.html", tmp / "card.html"]
        assert main(["--root", str(root), "report", "--sweep", str(sweep),
                     "--out", str(pages[0])]) == 0
        assert main(["--root", str(root), "report", *map(str, cards),
                     "--out", str(pages[1])]) == 0
        with Browser(tmp / "profile") as b:
            b.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000,
                   deviceScaleFactor=1, mobile=False)
            for page in pages:
                b.open(page.as_uri())
                b.wait("document.body.dataset.firstMs")
                for name, x, y, w, h in b.js(BOXES):
                    png = b.send("Page.captureScreenshot", format="png",
                                 captureBeyondViewport=True,
                                 clip={"x": x, "y": y, "width": w, "height": h, "scale": 1})
                    dest = out / f"chart-{name}.png"
                    dest.write_bytes(base64.b64decode(png["data"]))
                    written.append(dest)
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    for p in shots(ap.parse_args().out):
        print(p, p.stat().st_size, "bytes")
