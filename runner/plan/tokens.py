"""Stage 2, plan: the token plan: image and prompt tokens per item, before any model loads.

Mistral-format models (tokenizer_mode mistral, a tekken.json in the model folder): exact. The
whole chat request is encoded with mistral-common's `MistralTokenizer.encode_chat_completion`
(what vLLM itself calls), each image stood in for by a 1x1 image so no pixels are decoded, and
its tokens replaced by the exact count from the tokenizer's image encoder for the image's
real size (rows x (columns + 1): one [IMG_BREAK]/[IMG_END] per row).
Hugging Face models the model's own processor counts (hf_tokens.py: Qwen2-VL): exact.
Other models (Hugging Face layout): the same rule with the model's vision config and the
bundled Pixtral tokenizer for text, labelled "estimate".
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.bundled import BUNDLED_TOKENIZER as BUNDLED
from runner.bundled import mistral_common_file
from runner.files import read_json

if TYPE_CHECKING:
    from runner.plan.load import Item, Plan

TOKEN_KINDS = ("too_long", "request")  # the item errors plan_tokens sets (per run)


@dataclass
class ItemTokens:
    id: str
    key: str
    images: int
    image_tokens: int
    prompt_tokens: int  # text + image tokens of the whole chat request
    exact: bool
    error: str | None = None  # the item's error (bad image, too many images, too long)


@dataclass(frozen=True)
class _Size:
    size: tuple[int, int]


_BUILDING = threading.Lock()


def mistral_tokenizer(path: str) -> Any:
    """mistral-common's tokenizer for a tekken.json, in its default validation mode (test),
    built once per process and file (its vocabulary costs ~1 CPU s): the plan counts with it,
    and vLLM's in-process frontend is handed the same object (runner/engine/tokenizer.py).
    Whoever asks second, in any thread, waits for the first build."""
    with _BUILDING:
        return _tokenizer(os.path.realpath(path))


@lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    """Its INFO lines on loading ("Adding special tokens ...") silenced for the load only:
    the plan's console shows the runner's lines alone."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    log = logging.getLogger("mistral_common")
    before = log.level
    log.setLevel(logging.WARNING)
    try:
        return MistralTokenizer.from_file(path)
    finally:
        log.setLevel(before)


class TokenCounter:
    """Counts tokens for one model; built once per plan."""

    def __init__(self, model: Any):
        folder = Path(model.get("tokenizer") or model.path)
        tekken = folder / "tekken.json" if folder.is_dir() else folder
        mistral = model.get("tokenizer_mode") == "mistral"
        self.exact = mistral and tekken.is_file() and tekken.suffix == ".json"
        self.source = str(tekken) if self.exact else f"estimate ({BUNDLED}, mistral-common)"
        self.tok = mistral_tokenizer(str(tekken if self.exact else mistral_common_file()))
        enc = self.tok.instruct_tokenizer.image_encoder
        self.encoder = enc
        self.patch, self.max_size, self.merge = 16, 1024, 1
        if enc is not None:
            c = enc.image_config
            self.patch, self.max_size, self.merge = (c.image_patch_size, c.max_image_size,
                                                     c.spatial_merge_size)
        if not self.exact:
            self._hf_vision(Path(model.path) / "config.json")
        from PIL import Image as PILImage

        self.dummy = PILImage.new("RGB", (1, 1))
        self.dummy_tokens = self.image_tokens(1, 1)

    def _hf_vision(self, f: Path) -> None:
        v = read_json(f, {}).get("vision_config") or {}
        self.patch = int(v.get("patch_size", self.patch))
        self.max_size = int(v.get("image_size", self.max_size))
        self.merge = int(v.get("spatial_merge_size", self.merge))

    def image_tokens(self, w: int, h: int) -> int:
        if self.exact and self.encoder is not None:
            cols, rows = self.encoder._image_to_num_tokens(_Size((w, h)))
        else:  # mistral-common's rule (ImageEncoder._image_to_num_tokens)
            r = max(w / self.max_size, h / self.max_size)
            if r > 1:
                w, h = max(round(w / r), 1), max(round(h / r), 1)
            cols = (w - 1) // (self.patch * self.merge) + 1
            rows = (h - 1) // (self.patch * self.merge) + 1
        return rows * (cols + 1)

    def prompt_tokens(self, item: Item) -> int:
        from mistral_common.protocol.instruct.chunk import ImageChunk, TextChunk
        from mistral_common.protocol.instruct.messages import (
            AssistantMessage,
            SystemMessage,
            UserMessage,
        )
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        msgs: list[Any] = []
        n_img = 0
        for m in item.messages:
            c = m["content"]
            if isinstance(c, list):
                chunks: list[Any] = []
                for p in c:
                    if p["type"] == "text":
                        chunks.append(TextChunk(text=p["text"]))
                    else:
                        chunks.append(ImageChunk(image=self.dummy))
                        n_img += 1
                c = chunks
            cls = {"system": SystemMessage, "user": UserMessage,
                   "assistant": AssistantMessage}[m["role"]]
            msgs.append(cls(content=c))
        toks = self.tok.encode_chat_completion(ChatCompletionRequest(messages=msgs)).tokens
        return len(toks) - n_img * self.dummy_tokens


def token_counter(model: Any) -> Any:
    """The model's own processor where it counts exactly (hf_tokens.py), else TokenCounter."""
    from runner.plan.hf_tokens import HfTokenCounter, counts_exactly

    folder = Path(model.get("tokenizer") or model.path)
    if model.get("tokenizer_mode") != "mistral" and counts_exactly(folder):
        return HfTokenCounter(model, folder)
    return TokenCounter(model)


def _image_parts(it: Item) -> int:
    return sum(p["type"] == "image_url" for m in it.messages if isinstance(m["content"], list)
               for p in m["content"])


def plan_tokens(cfg: Any, plan: Plan, items: Iterable[Item] | None = None) -> list[ItemTokens]:
    """Token counts for `items` (default: the whole plan). Marks items whose prompt does not
    fit `model.max_model_len` (with room for one output token), or that the tokenizer rejects,
    as item errors. These errors depend on the model, so they are computed for each run: an
    error of these kinds an item carries from an earlier count is cleared first."""
    counter = token_counter(cfg.model)
    max_len = cfg.model.get("max_model_len")
    out = []
    for it in plan.items if items is None else items:
        if it.error_kind in TOKEN_KINDS:
            it.error = it.error_kind = None
        img = sum(counter.image_tokens(im.width, im.height) for im in it.images)
        n = 0
        if _image_parts(it) == len(it.images):  # all images resolved (else already an error)
            try:
                n = counter.prompt_tokens(it) + img
            except Exception as e:  # noqa: BLE001 - mistral-common rejects bad requests
                it.error = f"the tokenizer rejects this request ({type(e).__name__}: {e})"
                it.error_kind = "request"
        if it.error is None and max_len and n >= max_len:
            it.error = (f"prompt has {n} tokens, over model.max_model_len={max_len} "
                        "(at least one output token must fit)")
            it.error_kind = "too_long"
        out.append(ItemTokens(it.id, it.key, len(it.images), img, n, counter.exact, it.error))
    return out


def estimate_label(model: Any) -> str:
    """Why the counts are estimates: a Mistral-format model whose tekken.json is not there
    yet (not downloaded), or a model in the Hugging Face layout."""
    if (model.get("api") or {}).get("url"):
        return "ESTIMATE (a hosted model: its tokenizer is the API's own)"
    if model.get("tokenizer_mode") == "mistral":
        return (f"ESTIMATE (tokenizer not there yet: no tekken.json in "
                f"{model.get('tokenizer') or model.path}; counted with {BUNDLED})")
    return "ESTIMATE (not a Mistral-format model)"


def totals(tokens: list[ItemTokens], stored: Collection[str] = ()) -> dict[str, Any]:
    return {"items": len(tokens), "images": sum(t.images for t in tokens),
            "image_tokens": sum(t.image_tokens for t in tokens),
            "prompt_tokens": sum(t.prompt_tokens for t in tokens),
            "errors": sum(t.error is not None for t in tokens),
            "stored": sum(t.key in stored for t in tokens),
            "exact": all(t.exact for t in tokens)}


def needs(tokens: list[ItemTokens], max_tokens: dict[str, int | None],
          max_model_len: int | None) -> dict[str, Any]:
    """What a plan asks of the engine, for a dry run: its largest item (images, prompt tokens),
    the max_model_len that holds the largest prompt plus its max_tokens (`max_tokens`: each
    item's effective one, by key; None: what max_model_len leaves), the errors it would store
    and the most tokens it could generate."""
    ok = [t for t in tokens if t.error is None]
    room = [t.prompt_tokens + (max_tokens.get(t.key) or 0) for t in ok]
    return {"items": len(tokens), "errors": len(tokens) - len(ok),
            "max_images": max((t.images for t in tokens), default=0),
            "max_prompt_tokens": max((t.prompt_tokens for t in ok), default=0),
            "needs_len": max(room, default=0), "max_model_len": max_model_len,
            "prompt_tokens": sum(t.prompt_tokens for t in ok),
            "max_new_tokens": sum(max_tokens.get(t.key) or max(
                (max_model_len or 0) - t.prompt_tokens, 0) for t in ok)}


MISTRAL_LEN = 128_000  # vLLM's max_position_embeddings for a params.json without one
# (vllm/transformers_utils/configs/mistral.py)


def model_len(model: Any) -> int | None:
    """The longest sequence the model itself takes, as vLLM derives it from the weights'
    folder (config.json's max_position_embeddings, its text_config's for a vision model;
    params.json's, else vLLM's default): a max_model_len above it is refused at engine start.
    None: not known before the weights are there (or a hosted model)."""
    if (model.get("api") or {}).get("url"):
        return None
    folder = Path(model.path)
    if model.get("config_format") == "mistral":
        params = read_json(folder / "params.json", None)
        return int(params.get("max_position_embeddings", MISTRAL_LEN)) \
            if isinstance(params, dict) else None
    c = read_json(folder / "config.json", None)
    if not isinstance(c, dict):
        return None
    n = (c.get("text_config") or {}).get("max_position_embeddings") \
        or c.get("max_position_embeddings")
    return int(n) if n else None


def show_plan(cfg: Any, plan: Plan, tokens: list[ItemTokens], stored: Collection[str] = (),
              rows: int = 40) -> dict[str, Any]:
    """Prints the plan (the first `rows` items, every error up to `rows` more, totals) with
    rich on stderr; returns the totals."""
    from rich.table import Table

    from runner.console import console

    tot = totals(tokens, stored)
    hf = cfg.model.get("tokenizer_mode") != "mistral"
    kind = ("exact (the model's processor)" if hf else "exact (mistral-common)") \
        if tot["exact"] else estimate_label(cfg.model)
    t = Table(title=f"plan · {plan.name} ({plan.format}) · {cfg.model.name} · tokens {kind}",
              title_justify="left")
    for c, j in (("id", "left"), ("images", "right"), ("image tok", "right"),
                 ("prompt tok", "right"), ("max_tokens", "right"), ("status", "left")):
        t.add_column(c, justify=j, overflow="fold")  # type: ignore[arg-type]
    shown = [x for x in tokens[:rows]]
    shown += [x for x in tokens[rows:] if x.error][:rows]
    run_max = cfg.sampling.get("max_tokens")
    over = {it.key: it.sampling.get("max_tokens", run_max) for it in plan.items}
    for x in shown:
        st = f"[red]{x.error}[/]" if x.error else "[cyan]stored[/]" if x.key in stored else "todo"
        mt = over.get(x.key, run_max)  # each item's own (its sampling override), else the run's
        t.add_row(x.id, str(x.images), f"{x.image_tokens:,}", f"{x.prompt_tokens:,}",
                  "-" if mt is None else f"{mt:,}", st)
    if len(tokens) > len(shown):
        t.add_row(f"… {len(tokens) - len(shown):,} more", "", "", "", "", "")
    t.add_section()
    todo = tot["items"] - tot["stored"] - tot["errors"]
    t.add_row("total", f"{tot['images']:,}", f"{tot['image_tokens']:,}",
              f"{tot['prompt_tokens']:,}", "",
              f"{tot['stored']:,} stored · {todo:,} to run · "
              + (f"[red]{tot['errors']:,} errors[/]" if tot["errors"] else "0 errors"))
    console.print(t)
    lim = cfg.model.get("limit_mm_per_prompt") or {}
    console.print(f"max_model_len {cfg.model.get('max_model_len')} · images per prompt ≤ "
                  f"{lim.get('image')} · tokens: " + (("exact, the model's processor and chat "
                  "template" if hf else "exact, the model's tekken.json")
                  if tot["exact"] else "estimate: the bundled Pixtral tokenizer "
                  + ("(the model's own is not downloaded yet)"
                     if cfg.model.get("tokenizer_mode") == "mistral" else
                     "and the model's vision config, not the model's own processor")))
    return tot
