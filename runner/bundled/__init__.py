"""What the runner ships besides its code: the tiny models (built on first use, from
`model.build`) and the sample images of prompts/. Their builders are deterministic: the same
Pillow and torch give the same bytes."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from runner.errors import UserError

KINDS = ("tiny", "tiny_hf")
BUNDLED_TOKENIZER = "tekken_240911.json"  # Pixtral-12B-2409's, shipped by mistral-common


def build(kind: str, path: Path) -> Path:
    """Build the bundled model `kind` at `path` unless it is there already."""
    from runner.bundled import tiny, tiny_hf

    return (tiny if kind == "tiny" else tiny_hf).build(path)


def ensure_weights(m: DictConfig) -> None:
    """Build a bundled tiny model on first use; for any other, say exactly what is missing."""
    p = Path(m.path)
    if m.build in KINDS:
        build(m.build, p)
        return
    need = "params.json" if m.config_format == "mistral" else "config.json"
    if not (p / need).is_file():
        where = f"no {need} in {p}" if p.is_dir() else f"{p} does not exist"
        get = (f"download it with `hf download {m.hf_repo} --local-dir {p}` or "
               if m.hf_repo else "")
        raise UserError(f"Model weights for '{m.name}' not found ({where}): {get}"
                        f"set model.path=/path/to/{p.name}.")


def mistral_common_file(name: str = BUNDLED_TOKENIZER) -> Path:
    """A tokenizer file that mistral-common ships (default: Pixtral-12B-2409's tekken)."""
    import mistral_common

    return Path(mistral_common.__file__).parent / "data" / name
