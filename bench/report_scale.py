"""The HTML report at scale: build time, bytes per item and first paint in headless Chromium.

    .venv/bin/python bench/report_scale.py [--items 8000 100000] [--kinds image text] [--dir DIR]

For each size, a fake store on disk (no engine): a JSONL set of distinct 256x192 photo-like
JPEGs (issue 26's measurement) and a run answering each with ~60 words, scored; and a
text-only set and run of the same size. Then, per report: the build with an empty thumbnail
cache (cold) and again with it (warm, the rebuild), each with its CPU time (this process
and its pool: what the build costs, whatever else the machine runs), one thumbnail's time
(in one process), the report's bytes per item (every file of the report folder, thumbnails
included), and in Chromium: the time from navigation to the first page's rows and
thumbnails drawn (in a running browser, and from starting Chromium), the "only items some
run got wrong" switch over every item, and a text search (which loads every chunk).
`--dir` keeps the fake stores there, so a rerun skips making them (and the cache stays warm).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from browser import Browser  # noqa: E402

from runner.results.report.html import build_report  # noqa: E402
from runner.results.report.thumbs import render  # noqa: E402
from runner.results.scoring.score import score_run  # noqa: E402

WORDS = "the a chart shows revenue quarter table city receipt total of in is and with".split()
W, H = 256, 192


def photo(path: Path) -> None:
    """Noisy shapes on noise, blurred: compresses like a photo, not like flat clip art."""
    rng = random.Random(path.name)
    im = Image.effect_noise((W, H), 40).convert("RGB")
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.randrange(W - 40), rng.randrange(H - 40)
        d.ellipse([x, y, x + rng.randrange(10, 100), y + rng.randrange(10, 100)],
                  fill=tuple(rng.randrange(256) for _ in range(3)))
    im.filter(ImageFilter.GaussianBlur(1)).save(path, quality=90)


def make_store(base: Path, n: int, images: bool) -> Path:
    """<base>/prompts/set.jsonl (+ images/) and <base>/outputs/run0, scored; the run folder."""
    run = base / "outputs" / "run0"
    if (run / "metrics.json").exists():
        return run
    sdir = base / "prompts"
    (sdir / "images").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = random.Random(n)
    items = [{"id": f"q{i}", "text": f"Question {i}: what is shown?",
              "expected": rng.choice("ABCD"), "tags": [f"t{i % 5}"], "scorer": "choice"}
             for i in range(n)]
    if images:
        for i, it in enumerate(items):
            it["images"] = [f"images/{i}.jpg"]
        with ProcessPoolExecutor() as pool:
            list(pool.map(photo, [sdir / f"images/{i}.jpg" for i in range(n)], chunksize=256))
    with open(sdir / "set.jsonl", "w") as f:
        f.writelines(json.dumps(it) + "\n" for it in items)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(json.dumps(
        {"prompts": {"name": str(sdir / "set.jsonl")}, "sampling": {"temperature": 0}}))
    with open(run / "results.jsonl", "w") as f:
        for i, it in enumerate(items):
            out = " ".join(rng.choice(WORDS) for _ in range(60)) + \
                f" The answer is ({rng.choice('ABCD')})."
            ims = [{"path": p, "sha256": f"{n:08x}{i:056x}"} for p in it.get("images", [])]
            f.write(json.dumps({"id": it["id"], "key": f"k{i}", "status": "ok",
                                "prompt": it["text"], "output": out, "images": ims,
                                "expected": it["expected"], "tags": it["tags"],
                                "finish_reason": "stop"}) + "\n")
    score_run(run)
    print(f"  fake store: {n} items{' with images' * images} in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return run


def per_thumbnail(images: Path, k: int = 300) -> str:
    """One thumbnail's time in one process (best of two passes over k images) and bytes."""
    files = sorted(images.iterdir())[:k]
    best, size = float("inf"), 0
    for _ in range(2):
        t0 = time.perf_counter()
        size = sum(len((render(f) or (b"", ""))[0]) for f in files)
        best = min(best, time.perf_counter() - t0)
    return f"{best / len(files) * 1e3:.2f} ms and {size / len(files):.0f} B per thumbnail"


def cpu_s() -> float:
    """CPU seconds of this process and its ended children (the build's thumbnail pool):
    what the build costs whatever else the machine is running."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def report_bytes(page: Path) -> int:
    """Every file of a report folder (thumbnails included), or the one file."""
    if page.name != "index.html":
        return page.stat().st_size
    return sum(p.stat().st_size for p in page.parent.rglob("*") if p.is_file())


def cold_start(profile: Path, page: Path) -> float:
    """Seconds from starting Chromium to the first page drawn (as a user opening the file)."""
    shutil.rmtree(profile, ignore_errors=True)
    t0 = time.perf_counter()
    with Browser(profile, timeout=300) as b:
        b.open(page.as_uri())
        b.wait("document.body.dataset.firstMs", 120_000)
        return time.perf_counter() - t0


def in_browser(b: Browser, page: Path) -> dict[str, float]:
    body = "document.body.dataset"
    t0 = time.perf_counter()
    b.open(page.as_uri())
    b.wait(f"{body}.firstMs", 120_000)
    first = time.perf_counter() - t0
    in_page = float(b.js(f"{body}.firstMs")) / 1e3
    t0 = time.perf_counter()
    b.js("(() => { const c = document.getElementById('wrong'); c.checked = true;"
         "c.dispatchEvent(new Event('input')); })()")
    b.wait(f"{body}.matches !== {body}.rows", 120_000)
    wrong = time.perf_counter() - t0
    t0 = time.perf_counter()
    b.js("(() => { const q = document.getElementById('q'); q.value = 'revenue quarter table';"
         "q.dispatchEvent(new Event('input')); })()")
    b.wait(f"{body}.chunksLoaded == Math.ceil({body}.rows / 2000) && !"
           "document.getElementById('busy').textContent", 300_000)
    search = time.perf_counter() - t0
    return {"first_paint_s": first, "first_paint_in_page_s": in_page, "wrong_s": wrong,
            "search_s": search}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, nargs="+", default=[8000, 100_000])
    ap.add_argument("--dir", type=Path, help="keep the fake stores here (reused by a rerun)")
    ap.add_argument("--kinds", nargs="+", choices=("image", "text"), default=["image", "text"],
                    help="which fake stores (default both)")
    ap.add_argument("--warm-only", action="store_true",
                    help="keep the thumbnail cache: time only the rebuild")
    a = ap.parse_args()
    tmp = None if a.dir else tempfile.TemporaryDirectory()
    base = a.dir or Path(tmp.name)  # type: ignore[union-attr]
    with Browser(base / "profile", timeout=300) as b:
        for n in a.items:
            for kind in a.kinds:
                d = base / f"{kind}-{n}"
                run = make_store(d, n, kind == "image")
                cache = d / "outputs" / ".cache" / "thumbs"
                times, cpu = [], []
                for label in ("warm",) if a.warm_only else ("cold", "warm"):
                    if label == "cold":
                        shutil.rmtree(cache, ignore_errors=True)
                    t0, c0 = time.perf_counter(), cpu_s()
                    page = build_report([run], d / "report.html")
                    times.append(time.perf_counter() - t0)
                    cpu.append(cpu_s() - c0)
                cold = "not measured" if a.warm_only else f"{times[0]:.1f} s ({cpu[0]:.1f} CPU s)"
                if kind == "image":
                    print(f"  {per_thumbnail(d / 'prompts' / 'images')} (one process)",
                          flush=True)
                size = report_bytes(page)
                r = in_browser(b, page)
                r["cold_s"] = cold_start(base / "profile-cold", page)
                print(f"{n} {kind} items: build {cold} cold, "
                      f"{times[-1]:.1f} s ({cpu[-1]:.1f} CPU s) warm; "
                      f"{size / 1e6:.1f} MB, {size / n:.0f} B/item; first page drawn "
                      f"{r['first_paint_s']:.2f} s after navigation "
                      f"({r['first_paint_in_page_s']:.2f} s in-page; {r['cold_s']:.2f} s from "
                      f"starting Chromium); 'wrong' switch "
                      f"{r['wrong_s']:.2f} s; text search over every chunk "
                      f"{r['search_s']:.2f} s", flush=True)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
