"""Published figures the card puts beside a run: model family -> benchmark -> figure.

Only figures read in a named source; a benchmark without one is left out (never estimated).
Values are as published: percent for the scored benchmarks, MM-MT-Bench on the judge's 1-10.
"""

from __future__ import annotations

from typing import Any

BLOG_12B = ("Mistral AI, 'Announcing Pixtral 12B', 2024-09-17 (mistral.ai/news/pixtral-12b); "
            "the same figures in the mistralai/Pixtral-12B-2409 model card")
BLOG_LARGE = ("Mistral AI, 'Pixtral Large', 2024-11-18 (mistral.ai/news/pixtral-large): "
              "'On MathVista ... our model achieves 69.4%'")

FIGURES: dict[str, dict[str, dict[str, Any]]] = {
    "Pixtral-12B-2409": {
        "mmmu": {"value": 52.5, "label": "MMMU (CoT)", "source": BLOG_12B},
        "mathvista": {"value": 58.0, "label": "Mathvista (CoT)", "source": BLOG_12B},
        "chartqa": {"value": 81.8, "label": "ChartQA (CoT)", "source": BLOG_12B},
        "docvqa": {"value": 90.7, "label": "DocVQA (ANLS)", "source": BLOG_12B},
        "vqav2": {"value": 78.6, "label": "VQAv2 (VQA Match)", "source": BLOG_12B},
        "mm_mt_bench": {"value": 6.05, "label": "MM MT-Bench", "source": BLOG_12B},
    },
    # The blog's table is an image; its text gives MathVista only. Pixtral Large's other
    # figures are left out until read in a source.
    "Pixtral-Large-Instruct-2411": {
        "mathvista": {"value": 69.4, "label": "MathVista", "source": BLOG_LARGE},
    },
}


def family(names: list[str]) -> str | None:
    """The published model a run's model is (or quantizes), from its name, path or repo;
    the tiny random-weight twins are none."""
    text = " ".join(n.lower().replace("_", "-") for n in names if n)
    if "tiny" in text:
        return None
    if "pixtral-12b" in text:
        return "Pixtral-12B-2409"
    if "pixtral-large" in text:
        return "Pixtral-Large-Instruct-2411"
    return None


def figure(model: str | None, benchmark: str) -> dict[str, Any] | None:
    return FIGURES.get(model or "", {}).get(benchmark)
