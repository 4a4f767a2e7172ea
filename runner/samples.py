"""Draws the bundled sample images (prompts/sample/images/) with Pillow, deterministically.

`python -m runner.samples` rewrites them; the same Pillow gives the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parent.parent / "prompts" / "sample" / "images"


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def bar_chart() -> Image.Image:
    im = Image.new("RGB", (320, 224), "white")
    d = ImageDraw.Draw(im)
    d.text((10, 6), "Revenue by quarter (M$)", fill="black", font=font(16))
    values = {"Q1": 12, "Q2": 18, "Q3": 27, "Q4": 21}
    for i, (q, v) in enumerate(values.items()):
        x = 40 + i * 68
        colour = ("#4c72b0", "#55a868", "#c44e52", "#8172b2")[i]
        d.rectangle([x, 200 - v * 6, x + 44, 200], fill=colour)
        d.text((x + 12, 203), q, fill="black", font=font(14))
        d.text((x + 12, 200 - v * 6 - 18), str(v), fill="black", font=font(14))
    d.line([30, 200, 310, 200], fill="black", width=2)
    return im


def receipt() -> Image.Image:
    im = Image.new("RGB", (224, 320), "#fbf8ef")
    d = ImageDraw.Draw(im)
    lines = ["CAFE PIXEL", "12 Rue des Images", "", "Espresso      2.50", "Croissant     1.80",
             "Orange juice  3.70", "", "TOTAL         8.00", "", "Paid by card", "2024-09-11 10:42"]
    for n, t in enumerate(lines):
        d.text((16, 12 + n * 26), t, fill="black", font=font(15))
    return im


def table() -> Image.Image:
    im = Image.new("RGB", (320, 160), "white")
    d = ImageDraw.Draw(im)
    rows = [("City", "Pop. (M)", "Country"), ("Paris", "2.1", "France"),
            ("Berlin", "3.7", "Germany"), ("Madrid", "3.3", "Spain")]
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            x, y = 8 + c * 104, 8 + r * 36
            d.rectangle([x, y, x + 104, y + 36], outline="black",
                        fill="#dde6f3" if r == 0 else "white")
            d.text((x + 8, y + 9), cell, fill="black", font=font(15))
    return im


def shapes(kind: str) -> Image.Image:
    im = Image.new("RGB", (192, 192), "white")
    d = ImageDraw.Draw(im)
    if kind == "left":
        d.ellipse([30, 30, 162, 162], fill="#d62728")
        d.rectangle([10, 10, 50, 50], fill="#1f77b4")
    else:
        d.ellipse([30, 30, 162, 162], fill="#d62728")
        d.rectangle([142, 142, 182, 182], fill="#2ca02c")
        d.polygon([(96, 20), (80, 50), (112, 50)], fill="#ff7f0e")
    return im


IMAGES = {"bar_chart.png": bar_chart, "receipt.png": receipt, "table.png": table,
          "shapes_left.png": lambda: shapes("left"), "shapes_right.png": lambda: shapes("right")}


def write(out: Path = OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in IMAGES.items():
        draw().save(out / name, optimize=False, compress_level=9)
        paths.append(out / name)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    for p in write(ap.parse_args().out):
        print(p)
