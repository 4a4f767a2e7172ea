"""Exact token counts for Hugging Face models whose own processor is in the model folder and
whose image tokens depend on the image's size only (PROCESSED: Qwen2-VL, LLaVA-OneVision):
the item's chat, with each image in its place, goes through the model's chat template and
processor (what vLLM itself runs), each image stood in for by a blank image of the item's
size, so no pixels are decoded. Transformers is imported only here, and only for such a model.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.files import read_json

if TYPE_CHECKING:
    from runner.plan.load import Item

# config.json's model_type of the models counted exactly by their own processor
PROCESSED = ("qwen2_vl", "llava_onevision")


def counts_exactly(folder: Path) -> bool:
    """The folder holds a model of a PROCESSED type with its processor and chat template."""
    cfg = read_json(folder / "config.json", {})
    return cfg.get("model_type") in PROCESSED and (folder / "processor_config.json").is_file() \
        and (folder / "chat_template.jinja").is_file()


@lru_cache(maxsize=2)
def _processor(folder: str, kwargs: tuple[tuple[str, Any], ...]) -> Any:
    from transformers import AutoProcessor

    with warnings.catch_warnings():  # its FutureWarning on min/max_pixels: vLLM passes them
        warnings.simplefilter("ignore", FutureWarning)  # the same way; kept off the plan
        return AutoProcessor.from_pretrained(folder, **dict(kwargs))


class HfTokenCounter:
    """TokenCounter's interface (runner/plan/tokens.py) through the model's own processor."""

    exact = True

    def __init__(self, model: Any, folder: Path):
        kw = model.get("mm_processor_kwargs") or {}
        self.source = f"{folder} (its processor and chat template)"
        self.proc = _processor(str(folder), tuple(sorted(dict(kw).items())))
        self._image: dict[tuple[int, int], int] = {}

    def _blank(self, w: int, h: int) -> Any:
        from PIL import Image

        return Image.new("RGB", (w, h))

    def image_tokens(self, w: int, h: int) -> int:
        """The placeholder tokens one image of this size becomes."""
        if (w, h) not in self._image:  # the processor expands its image token for this size
            token = self.proc.image_token
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                ids = self.proc(text=[token], images=[self._blank(w, h)],
                                return_tensors="np")["input_ids"][0]
            tid = self.proc.tokenizer.convert_tokens_to_ids(token)
            self._image[(w, h)] = int((ids == tid).sum())
        return self._image[(w, h)]

    def prompt_tokens(self, item: Item) -> int:
        """The whole request's tokens less its images' (plan_tokens adds those back)."""
        msgs: list[dict[str, Any]] = []
        for m in item.messages:
            c = m["content"]  # as vLLM hands a template its parts: a list, images in place
            c = [{"type": "text", "text": c}] if isinstance(c, str) else [
                {"type": "image"} if p["type"] == "image_url" else
                {"type": "text", "text": p["text"]} for p in c]
            msgs.append({"role": m["role"], "content": c})
        text = self.proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        images = [self._blank(im.width, im.height) for im in item.images]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ids = self.proc(text=[text], images=images or None,
                            return_tensors="np")["input_ids"][0]
        return len(ids) - sum(self.image_tokens(im.width, im.height) for im in item.images)
