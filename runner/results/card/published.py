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

CARD_12B = ("mistralai/Pixtral-12B-2409 model card, 'Benchmarks' ('All models were re-evaluated "
            "and benchmarked through the same evaluation pipeline'), read in its copy at "
            "huggingface.co/Wark1/Pixtral-12B-2409")
# The open columns of the card's tables (Pixtral 12B's own column is BLOG_12B's, the same
# figures). Not here, for want of a source read: the paper's (arXiv 2410.07073) Llama-3.2
# 11B/90B and LLaVA-OV 72B columns and its hosted ones (Claude-3 Haiku, Gemini-1.5 Flash 8B,
# GPT-4o, Claude-3.5 Sonnet), and Mistral-Small-3.1's.
_OPEN = {"Qwen2-VL-7B-Instruct": (47.6, 54.4, 38.6, 94.5, 75.9, 5.43),
         "LLaVA-OneVision-7B": (45.1, 36.1, 67.1, 90.5, 78.3, 4.12),
         "Phi-3-Vision": (40.3, 36.4, 72.0, 84.9, 42.4, 3.70),
         "Phi-3.5-Vision": (38.3, 39.3, 67.7, 74.4, 56.1, 4.46)}
_LABELS = (("mmmu", "MMMU (CoT)"), ("mathvista", "Mathvista (CoT)"),
           ("chartqa", "ChartQA (CoT)"), ("docvqa", "DocVQA (ANLS)"),
           ("vqav2", "VQAv2 (VQA Match)"), ("mm_mt_bench", "MM MT-Bench"))

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
} | {model: {b: {"value": v, "label": label, "source": CARD_12B}
             for (b, label), v in zip(_LABELS, values, strict=True)}
     for model, values in _OPEN.items()}

# Who a run's model is, from its name, path or repo (lowercased, `_` as `-`): first match
# wins, so a longer name comes before a shorter one it contains.
NAMES = (("pixtral-12b", "Pixtral-12B-2409"), ("pixtral-large", "Pixtral-Large-Instruct-2411"),
         ("qwen2-vl-7b", "Qwen2-VL-7B-Instruct"),
         ("llava-onevision-qwen2-7b", "LLaVA-OneVision-7B"),
         ("llava-onevision-7b", "LLaVA-OneVision-7B"), ("llava-ov-7b", "LLaVA-OneVision-7B"),
         ("phi-3.5-vision", "Phi-3.5-Vision"), ("phi-3-vision", "Phi-3-Vision"))


def family(names: list[str]) -> str | None:
    """The published model a run's model is (or quantizes), from its name, path or repo;
    the tiny random-weight twins are none."""
    text = " ".join(n.lower().replace("_", "-") for n in names if n)
    if "tiny" in text:
        return None
    return next((model for needle, model in NAMES if needle in text), None)


def figure(model: str | None, benchmark: str) -> dict[str, Any] | None:
    return FIGURES.get(model or "", {}).get(benchmark)
