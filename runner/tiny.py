"""Writes a tiny random-weight Pixtral in Mistral's consolidated layout.

Same architecture and tokenizer as Pixtral-12B-2409 (tekken v3, 131072 vocab, 16px patches),
shrunk so that vLLM's CPU build loads it in seconds. Seeded: the files are identical every time.
Sizes respect the CPU attention kernel (head_dim 64; 16 was refused, see shared notes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

PARAMS = {
    "dim": 128,
    "n_layers": 2,
    "head_dim": 64,
    "hidden_dim": 256,
    "n_heads": 2,
    "n_kv_heads": 1,
    "rope_theta": 1000000000.0,
    "norm_eps": 1e-05,
    "vocab_size": 131072,
    # Stated so vLLM does not look for (and retry on) an HF config.json to find it.
    "max_position_embeddings": 128000,  # what vLLM assumes for Pixtral-12B-2409
    "vision_encoder": {
        "hidden_size": 64,
        "num_channels": 3,
        "image_size": 1024,
        "patch_size": 16,
        "rope_theta": 10000.0,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 1,
        "image_token_id": 10,
        "image_break_token_id": 12,
        "image_end_token_id": 13,
        "adapter_bias": True,
    },
}
SEED = 0
FILES = ("params.json", "tekken.json", "consolidated.safetensors")


def weight_shapes(p: dict = PARAMS) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Pixtral consolidated checkpoint."""
    d, hd, v = p["dim"], p["head_dim"], p["vocab_size"]
    q, kv, ff = p["n_heads"] * hd, p["n_kv_heads"] * hd, p["hidden_dim"]
    s: dict[str, tuple[int, ...]] = {"tok_embeddings.weight": (v, d), "norm.weight": (d,),
                                     "output.weight": (v, d)}
    for i in range(p["n_layers"]):
        pre = f"layers.{i}."
        s |= {pre + "attention.wq.weight": (q, d), pre + "attention.wk.weight": (kv, d),
              pre + "attention.wv.weight": (kv, d), pre + "attention.wo.weight": (d, q),
              pre + "feed_forward.w1.weight": (ff, d), pre + "feed_forward.w2.weight": (d, ff),
              pre + "feed_forward.w3.weight": (ff, d), pre + "attention_norm.weight": (d,),
              pre + "ffn_norm.weight": (d,)}
    ve = p["vision_encoder"]
    h, vi, ps = ve["hidden_size"], ve["intermediate_size"], ve["patch_size"]
    s["vision_encoder.patch_conv.weight"] = (h, ve["num_channels"], ps, ps)
    s["vision_encoder.ln_pre.weight"] = (h,)
    for i in range(ve["num_hidden_layers"]):
        pre = f"vision_encoder.transformer.layers.{i}."
        s |= {pre + f"attention.{w}.weight": (h, h) for w in ("wq", "wk", "wv", "wo")}
        s |= {pre + "feed_forward.w1.weight": (vi, h), pre + "feed_forward.w2.weight": (h, vi),
              pre + "feed_forward.w3.weight": (vi, h), pre + "attention_norm.weight": (h,),
              pre + "ffn_norm.weight": (h,)}
    ad = "vision_language_adapter."
    s |= {ad + "w_in.weight": (d, h), ad + "w_in.bias": (d,),
          ad + "w_out.weight": (d, d), ad + "w_out.bias": (d,)}
    return s


def tekken_path() -> Path:
    """The Pixtral-12B-2409 tokenizer that mistral-common ships."""
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"


def write_weights(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = SEED) -> None:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("norm.weight") or name.endswith("ln_pre.weight"):
            t = torch.ones(shape)
        elif name.endswith(".bias"):
            t = torch.zeros(shape)
        else:
            t = torch.randn(shape, generator=g) * 0.05
        tensors[name] = t.to(torch.bfloat16).contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def publish(out: Path, files: tuple[str, ...], write: Callable[[Path], None],
            force: bool = False) -> Path:
    """Write a model folder atomically (a temp folder renamed into place) unless all `files`
    are there already; a killed build never leaves a half-written model behind."""
    out = Path(out)
    if not force and all((out / f).exists() for f in files):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)  # some writers (transformers) create 0600 files
        if out.exists():
            shutil.rmtree(out)
        tmp.chmod(0o755)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write(folder: Path) -> None:
    (folder / "params.json").write_text(json.dumps(PARAMS, indent=2) + "\n")
    shutil.copyfile(tekken_path(), folder / "tekken.json")
    write_weights(folder / "consolidated.safetensors", weight_shapes())


def build(out: Path, force: bool = False) -> Path:
    """Write the tiny model to `out`; return `out`."""
    return publish(out, FILES, write, force)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in FILES:
        h.update((Path(folder) / f).read_bytes())
    return h.hexdigest()


def cli(doc: str, default_out: str, build: Callable[..., Path],
        digest: Callable[[Path], str]) -> None:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default=default_out, help="folder to write")
    ap.add_argument("--force", action="store_true", help="rewrite even if present")
    a = ap.parse_args()
    out = build(Path(a.out), force=a.force)
    print(f"{out}  sha256={digest(out)[:16]}")


if __name__ == "__main__":
    cli(__doc__, "data/pixtral-tiny", build, digest)
