"""Plan speed: items/s of the dry-run plan (load_plan + plan_tokens) on a set of N images.

    .venv/bin/python bench/plan_speed.py [--images 1000] [--max-image-size 0]

Generates N distinct images (by default mostly 1024x768 smooth photo-like JPEGs and 800x600
PNGs, or `--noise`: incompressible pixels, the worst case,
with 5% that need conversion: CMYK JPEGs, EXIF-rotated JPEGs and 16-bit PNGs) as one JSONL
set, then times, in fresh processes so the tokenizer load is counted:
  cold  - the first plan (every image hashed, decoded once to check it, conversions written);
  warm  - a second plan (conversions found in .cache; still hashes and checks every image);
Both include loading the Pixtral tokenizer (~1 s) and exact token counts for every item.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

PLAN = """
import sys, time, json
t = time.perf_counter()
from runner.config import register
from hydra import compose, initialize_config_dir
register()
with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose(config_name="config", overrides=sys.argv[2:])
from runner.plan.load import load_plan
from runner.plan.tokens import plan_tokens, totals
t1 = time.perf_counter()
plan = load_plan(cfg)
t2 = time.perf_counter()
tok = plan_tokens(cfg, plan)
t3 = time.perf_counter()
print(json.dumps({"items": len(plan.items), "load_s": t2 - t1, "tokens_s": t3 - t2,
                  "total_s": t3 - t, **totals(tok)}))
"""


def make_images(d: Path, n: int, noise: bool = False) -> list[str]:
    """Photo-like (smooth) images by default; `noise`: incompressible pixels, the worst case
    for hashing and decoding (~1 MB per image)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8)
    if not noise:
        small = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), "RGB")
        base = np.asarray(small.resize((1024, 768), Image.Resampling.BICUBIC))
    names = []
    for i in range(n):
        a = np.roll(base, i * 7, axis=1)  # distinct bytes per image
        kind = i % 20
        if kind == 0:
            name = f"cmyk_{i:05d}.jpg"
            Image.fromarray(a, "RGB").convert("CMYK").save(d / name, quality=85)
        elif kind == 1:
            name = f"rot_{i:05d}.jpg"
            ex = Image.Exif()
            ex[0x0112] = 6
            Image.fromarray(a, "RGB").save(d / name, quality=85, exif=ex.tobytes())
        elif kind == 2:
            name = f"deep_{i:05d}.png"
            Image.fromarray(a[:300, :400, 0].astype(np.uint16) * 257).save(d / name)
        elif kind % 2:
            name = f"photo_{i:05d}.jpg"
            Image.fromarray(a, "RGB").save(d / name, quality=85)
        else:
            name = f"scan_{i:05d}.png"
            Image.fromarray(a[:600, :800], "RGB").save(d / name, compress_level=1)
        names.append(name)
    return names


def plan_once(set_file: Path, extra: list[str]) -> dict:
    args = [sys.executable, "-c", PLAN, str(ROOT / "conf"), "model=pixtral_tiny",
            f"prompts.name={set_file}", *extra]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--max-image-size", type=int, default=0)
    ap.add_argument("--noise", action="store_true", help="incompressible images (worst case)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "set"
        (d / "images").mkdir(parents=True)
        t = time.perf_counter()
        names = make_images(d / "images", a.images, a.noise)
        mb = sum(f.stat().st_size for f in (d / "images").iterdir()) / 1e6
        print(f"generated {len(names)} images ({mb:.0f} MB) in {time.perf_counter() - t:.1f}s")
        f = d / "set.jsonl"
        f.write_text("".join(json.dumps({"id": n, "text": "Describe this image.",
                                         "images": [f"images/{n}"]}) + "\n" for n in names))
        extra = [f"prompts.max_image_size={a.max_image_size}"] if a.max_image_size else []
        for run in ("cold", "warm"):
            r = plan_once(f, extra)
            print(f"{run}: {r['items']} items, {r['images']} images, {r['image_tokens']:,} image "
                  f"tokens, {r['prompt_tokens']:,} prompt tokens, {r['errors']} errors | "
                  f"plan {r['load_s']:.2f}s + tokens {r['tokens_s']:.2f}s "
                  f"(process {r['total_s']:.2f}s) -> "
                  f"{r['items'] / (r['load_s'] + r['tokens_s']):.0f} items/s, "
                  f"{r['items'] / r['total_s']:.0f} items/s with start-up")


if __name__ == "__main__":
    main()
