"""What the runner ships besides its code: the tiny models (built on first use, from
`model.build`) and the sample images of prompts/. Their builders are deterministic: the same
Pillow and torch give the same bytes."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from runner.errors import UserError

KINDS = ("tiny", "tiny_hf", "tiny_hf_base", "tiny_qwen2vl", "tiny_llava_ov")
BUNDLED_TOKENIZER = "tekken_240911.json"  # Pixtral-12B-2409's, shipped by mistral-common


def build(kind: str, path: Path) -> Path:
    """Build the bundled model `kind` at `path` unless it is there already."""
    from runner.bundled import tiny, tiny_hf, tiny_llava_ov, tiny_qwen2vl

    return {"tiny": tiny.build, "tiny_hf": tiny_hf.build, "tiny_hf_base": tiny_hf.build_base,
            "tiny_qwen2vl": tiny_qwen2vl.build, "tiny_llava_ov": tiny_llava_ov.build}[kind](path)


def missing_weights(m: DictConfig) -> str | None:
    """None when the weights of `m` are there (or it is a bundled model, built on first use);
    else one sentence naming the path and how to download them (Hugging Face or ModelScope)."""
    if m.build in KINDS or (m.get("api") or {}).get("url"):  # built, or a hosted model
        return None
    p = Path(m.path)
    need = "params.json" if m.config_format == "mistral" else "config.json"
    if (p / need).is_file():
        return None
    where = f"no {need} in {p}" if p.is_dir() else f"{p} does not exist"
    get = (f"download them with `hf download {m.hf_repo} --local-dir {p}` (or `modelscope "
           f"download --model {m.hf_repo} --local_dir {p}`), or " if m.hf_repo else "")
    return (f"Model weights for '{m.name}' not found ({where}): {get}"
            f"set model.path=/path/to/{p.name} (docs/gpu.md).")


def ensure_weights(m: DictConfig) -> None:
    """Build a bundled tiny model on first use; for any other, say exactly what is missing."""
    if m.build in KINDS:
        build(m.build, Path(m.path))
        return
    if (why := missing_weights(m)) is not None:
        raise UserError(why)


def mistral_common_file(name: str = BUNDLED_TOKENIZER) -> Path:
    """A tokenizer file that mistral-common ships (default: Pixtral-12B-2409's tekken)."""
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / name
