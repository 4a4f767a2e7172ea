"""The seed's way, as a user writes it: each image read and sent as a base64 `data:` URL, one
`LLM(...)`, one `llm.chat` over every prompt. The engine arguments are the runner's for the
same Hydra overrides (runner.engine.engine_kwargs), so the two differ only in the work around
the engine. Writes {id: text} as JSON to the file given by --out.

    python bench/seed_script.py --set SET.jsonl --out OUT.json model=pixtral_tiny engine=cpu \
        sampling.max_tokens=8
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    a, overrides = ap.parse_known_args()
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from runner.bundled import ensure_weights
    from runner.config import register
    from runner.engine import engine_kwargs, environ

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    ensure_weights(cfg.model)
    items = [json.loads(x) for x in a.set.read_text().splitlines() if x.strip()]
    conversations = []
    for it in items:
        content = [{"type": "text", "text": it["text"]}]
        for f in it.get("images", []):
            data = base64.b64encode((a.set.parent / f).read_bytes()).decode()
            content.append({"type": "image_url",
                            "image_url": {"url": f"data:image/jpeg;base64,{data}"}})
        conversations.append([{"role": "user", "content": content}])
    with environ(dict(cfg.engine.env)):
        from vllm import LLM, SamplingParams

        llm = LLM(**engine_kwargs(cfg, a.set.parent))
    sp = SamplingParams(temperature=cfg.sampling.temperature,
                        max_tokens=cfg.sampling.max_tokens)
    outs = llm.chat(conversations, sp, use_tqdm=False)
    a.out.write_text(json.dumps({it["id"]: o.outputs[0].text
                                 for it, o in zip(items, outs, strict=True)}))


if __name__ == "__main__":
    main()
