"""The frontend's preprocessing rate: how many 1024x768 photo requests per second the runner
can queue into vLLM (image load, resize to patches, tokenization happen in this process, in
`LLM.enqueue_chat`), against the bare cost of decoding those JPEGs with Pillow.

    .venv/bin/python bench/preprocess.py [--n 200]

Decoding in a worker pool could only help if decoding were most of the time per request; the
second line says how much of it is.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from runner.bundled import ensure_weights
    from runner.config import register
    from runner.engine import engine_kwargs, environ
    from runner.engine.api import Finished
    from runner.engine.vllm_engine import VllmEngine
    from runner.plan.sampling import sampling_of

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=pixtral_tiny", "engine=cpu",
                                                       "sampling.max_tokens=1"])
    ensure_weights(cfg.model)
    with tempfile.TemporaryDirectory(dir=ROOT / "data") as tmp:
        d = Path(tmp)
        rng = np.random.default_rng(0)
        small = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), "RGB")
        base = np.asarray(small.resize((1024, 768), Image.Resampling.BICUBIC))
        files = []
        for i in range(a.n):
            f = d / f"p{i:04d}.jpg"
            Image.fromarray(np.roll(base, i * 3, axis=1), "RGB").save(f, quality=90)
            files.append(f)
        t = time.perf_counter()
        for f in files:
            with Image.open(f) as im:
                im.convert("RGB").load()
        decode = (time.perf_counter() - t) / a.n
        with environ(dict(cfg.engine.env)):
            eng = VllmEngine(engine_kwargs(cfg, d))
            try:
                sampling = sampling_of(cfg)
                msgs = [[{"role": "user", "content": [
                    {"type": "text", "text": "Describe this photo."},
                    {"type": "image_url", "image_url": {"url": f"file://{f}"}}]}] for f in files]
                eng.submit("warm", msgs[0], sampling)  # first request: lazy init paid here
                list(eng.events())
                t = time.perf_counter()
                for i, m in enumerate(msgs):
                    eng.submit(str(i), m, sampling)
                queue = (time.perf_counter() - t) / a.n
                done = sum(isinstance(e, Finished) for e in eng.events())
            finally:
                eng.shutdown()
    print(f"queued {a.n} 1024x768 photo requests: {1 / queue:.1f} items/s "
          f"({queue * 1000:.1f} ms each, vLLM's preprocessing in this process); {done} finished")
    print(f"Pillow decode alone: {decode * 1000:.1f} ms per photo = "
          f"{decode / queue:.0%} of the time to queue one")


if __name__ == "__main__":
    main()
