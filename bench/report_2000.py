"""Size and load time of a 2,000-item, 3-run HTML report, measured in headless Chromium.

    .venv/bin/python bench/report_2000.py [--items 2000] [--runs 3]

Fake runs on disk (no engine): one distinct 640x480 photo-like JPEG per item, ~60-word
outputs. Prints build time, file size, and Chromium's times: JSON parse + first page render
(in-page), load event (thumbnails of the first page decoded), and the whole headless process.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from runner.results.html import build_report  # noqa: E402
from runner.results.score import score_run  # noqa: E402

WORDS = "the a chart shows revenue quarter table city receipt total of in is and with".split()


def photo(rng: random.Random, path: Path) -> None:
    """Noisy shapes on a gradient: compresses like a photo, not like flat clip art."""
    im = Image.effect_noise((640, 480), 40).convert("RGB")
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.randrange(600), rng.randrange(440)
        d.ellipse([x, y, x + rng.randrange(20, 200), y + rng.randrange(20, 200)],
                  fill=tuple(rng.randrange(256) for _ in range(3)))
    im.filter(ImageFilter.GaussianBlur(1)).save(path, quality=90)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="copy the report here")
    a = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        sdir = tmp / "prompts" / "bench"
        (sdir / "images").mkdir(parents=True)
        t0 = time.perf_counter()
        items = []
        for i in range(a.items):
            photo(rng, sdir / "images" / f"{i}.jpg")
            items.append({"id": f"q{i}", "text": f"Question {i}: what is shown?",
                          "images": [f"images/{i}.jpg"], "expected": rng.choice("ABCD"),
                          "tags": [f"t{i % 5}"]})
        (sdir / "set.yaml").write_text(yaml.safe_dump({"scorer": "choice", "items": items}))
        print(f"fake set: {a.items} images in {time.perf_counter() - t0:.1f}s")
        dirs = []
        for k in range(a.runs):
            d = tmp / "outputs" / f"run{k}"
            d.mkdir(parents=True)
            (d / "config.yaml").write_text(yaml.safe_dump(
                {"prompts": {"name": "bench", "root": str(tmp / "prompts")},
                 "sampling": {"temperature": k / 2}}))
            with open(d / "results.jsonl", "w") as f:
                for i, it in enumerate(items):
                    out = " ".join(rng.choice(WORDS) for _ in range(60)) + \
                        f" The answer is ({rng.choice('ABCD')})."
                    f.write(json.dumps({"id": it["id"], "key": f"k{i}", "status": "ok",
                                        "prompt": it["text"], "output": out,
                                        "images": [{"path": it["images"][0], "sha256": f"s{i}"}],
                                        "expected": it["expected"], "tags": it["tags"],
                                        "finish_reason": "stop"}) + "\n")
            score_run(d)
            dirs.append(d)
        t0 = time.perf_counter()
        rep = build_report(dirs, tmp / "report.html")
        build_s = time.perf_counter() - t0
        size = rep.stat().st_size
        print(f"build_report: {build_s:.1f}s, {size / 1e6:.2f} MB "
              f"({size / a.items / 1e3:.1f} kB per item)")
        chromium = shutil.which("chromium")
        if not chromium:
            sys.exit("chromium missing: scripts/setup-browser.sh")
        for attempt in range(3):
            t0 = time.perf_counter()
            r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                "--disable-quic", "--no-first-run",
                                "--disable-background-networking", "--disable-component-update",
                                "--disable-sync", f"--user-data-dir={tmp / 'profile'}",
                                "--dump-dom", rep.as_uri()],
                               capture_output=True, text=True, timeout=300)
            wall = time.perf_counter() - t0
            body = re.search(r"<body([^>]*)>", r.stdout).group(1)
            ms = dict(re.findall(r'data-(dom-ms|render-ms|load-ms)="([\d.]+)"', body))
            rows = len(re.findall(r"<tr data-id=", r.stdout))
            print(f"chromium #{attempt + 1}: HTML parsed at {ms.get('dom-ms')} ms, "
                  f"JSON parse + first page {ms.get('render-ms')} ms, "
                  f"load event {ms.get('load-ms')} ms, {rows} rows shown, "
                  f"headless process {wall:.2f}s")
        if a.keep:
            shutil.copy(rep, a.keep)


if __name__ == "__main__":
    main()
