"""Writes a tiny random-weight twin of llava-onevision-qwen2-7b-ov-hf, in its Hugging Face
layout.

The same `LlavaOnevisionForConditionalGeneration` config shape (a SigLIP vision tower with
384-pixel tiles of 14-pixel patches, a Qwen2 text model, `anyres_max_9` tiling), its image
processor as transformers ships it for LLaVA-OneVision (384-pixel tiles, the 36 grid
pinpoints), its special tokens (`<image>`, `<video>` and Qwen2's) and its chat template (each
message's images first, then its text). The tokenizer is tiny_qwen2vl's byte-level BPE, built
here. Seeded: files are identical every time. Sizes respect vLLM's CPU attention kernel
(head_dim 64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.bundled.tiny import cli, drop_versions, publish
from runner.bundled.tiny import folder_digest as digest
from runner.bundled.tiny_qwen2vl import VOCAB, bpe

SEED = 0
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
# llava-hf/llava-onevision-qwen2-7b-ov-hf's chat template (chat_template.json)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\\n' + content['text'] }}{% endfor %}{{'<|im_end|>'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "processor_config.json", "chat_template.jinja")


def hf_config(tok: Any) -> Any:
    from transformers import LlavaOnevisionConfig

    text = {"model_type": "qwen2", "vocab_size": VOCAB, "hidden_size": 128,
            "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "tie_word_embeddings": False,
            "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>")}
    vision = {"model_type": "siglip_vision_model", "hidden_size": 128,
              "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 384, "patch_size": 14, "vision_use_head": False}
    return LlavaOnevisionConfig(
        text_config=text, vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)


def write(folder: Path) -> None:
    import torch
    from transformers import (
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tok = bpe(SPECIAL, CHAT_TEMPLATE)
    cfg = hf_config(tok)
    torch.manual_seed(SEED)
    LlavaOnevisionForConditionalGeneration(cfg).to(torch.bfloat16).save_pretrained(
        folder, safe_serialization=True)
    improc = LlavaOnevisionImageProcessor()
    LlavaOnevisionProcessor(
        image_processor=improc, video_processor=LlavaOnevisionVideoProcessor(), tokenizer=tok,
        chat_template=CHAT_TEMPLATE, num_image_tokens=(384 // 14) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9").save_pretrained(folder)
    legacy(folder / "model.safetensors")
    drop_versions(folder)


def legacy(f: Path) -> None:
    """The weights under the real checkpoint's names, which vLLM's loader reads:
    `vision_tower.vision_model.*` (transformers 5 writes `vision_tower.*`), without the
    vision tower's post-layernorm, which the features of its last layer do not use (vLLM
    builds none)."""
    from safetensors.torch import load_file, save_file

    w = load_file(str(f))
    out = {("vision_tower.vision_model." + k[len("vision_tower."):]
            if k.startswith("vision_tower.") else k): v for k, v in w.items()
           if not k.startswith("vision_tower.post_layernorm.")}
    save_file(out, str(f), metadata={"format": "pt"})


def build(out: Path, force: bool = False) -> Path:
    """Write the twin to `out` (atomically, see runner.bundled.tiny.publish); return `out`."""
    return publish(out, FILES, write, force)


def main() -> None:
    cli(__doc__, "data/llava-onevision-tiny", build, digest)


if __name__ == "__main__":
    main()
