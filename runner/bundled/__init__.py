"""What the runner ships besides its code: the tiny models (built on first use, from
`model.build`) and the sample images of prompts/. Their builders are deterministic: the same
Pillow and torch give the same bytes."""

from __future__ import annotations

from pathlib import Path

KINDS = ("tiny", "tiny_hf")


def build(kind: str, path: Path) -> Path:
    """Build the bundled model `kind` at `path` unless it is there already."""
    from runner.bundled import tiny, tiny_hf

    return (tiny if kind == "tiny" else tiny_hf).build(path)
