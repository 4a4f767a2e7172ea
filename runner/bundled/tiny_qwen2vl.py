"""Writes a tiny random-weight twin of Qwen2-VL-7B-Instruct, in its Hugging Face layout.

The same `Qwen2VLForConditionalGeneration` config shape (a Qwen2 text model with M-RoPE, a ViT
with 14-pixel patches, 2x2 patch merging and temporal patches of 2), the same special tokens and
chat template as the real model, and its image processor with the pixel bounds of
conf/model/qwen2_vl_7b.yaml. The tokenizer is a byte-level BPE built here with `tokenizers`
(the 256 bytes and the merges learnt from a fixed text, then Qwen2-VL's 14 special tokens:
507 tokens): not Qwen's 151k
vocabulary, so token ids differ, but the chat template and the image tokens are the real
model's. Seeded: files are identical every time. Sizes respect vLLM's CPU attention kernel
(head_dim 64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.bundled.tiny import cli, drop_versions, publish
from runner.bundled.tiny import folder_digest as digest

SEED = 0
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
           "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
           "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
           "<|image_pad|>", "<|video_pad|>")
MIN_PIXELS, MAX_PIXELS = 28 * 28, 1280 * 28 * 28  # conf/model/qwen2_vl_7b.yaml's
VOCAB = 1088  # the embedding rows: the BPE's tokens and the special ones, padded to 64
# Qwen2-VL-7B-Instruct's chat template: a default system prompt, one vision block per image
# in its place; written out (no macro) so vLLM detects the OpenAI content format.
CHAT_TEMPLATE = """{% set image_count = namespace(value=0) %}{% for message in messages %}\
{% if loop.first and message['role'] != 'system' %}<|im_start|>system
You are a helpful assistant.<|im_end|>
{% endif %}<|im_start|>{{ message['role'] }}
{% if message['content'] is string %}{{ message['content'] }}<|im_end|>
{% else %}{% for content in message['content'] %}\
{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}\
{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>\
{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>
{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
TEXT = " ".join(  # what the BPE learns its merges from: fixed, so the merges are too
    f"the quick brown fox {i} jumps over the lazy dog; which quarter had the highest revenue "
    "and how much was it? what is the total amount on this receipt? according to the table, "
    "which city has the largest population? what differs between the first and the second "
    "image? name three things a vision-language model can read in a scanned document."
    for i in range(64))
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "processor_config.json", "chat_template.jinja")


def bpe(special: tuple[str, ...], template: str) -> Any:
    """A byte-level BPE learnt from TEXT, then `special` (Qwen2's, as both twins' text models
    are Qwen2), with this chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=1024, show_progress=False,  # a cap: the fixed text yields fewer
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(list(special))
    assert tok.get_vocab_size() <= VOCAB
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", model_max_length=32768,
                                   chat_template=template)


def tokenizer() -> Any:
    return bpe(SPECIAL, CHAT_TEMPLATE)


def hf_config(tok: Any) -> Any:
    from transformers import Qwen2VLConfig

    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIAL}
    text = {"vocab_size": VOCAB, "hidden_size": 128, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0,
            # M-RoPE: temporal, height, width sections of head_dim / 2 (the real 16, 24, 24 of 64)
            "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
            "tie_word_embeddings": False, "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"]}
    vision = {"depth": 2, "embed_dim": 128, "hidden_size": 128, "num_heads": 2, "mlp_ratio": 2,
              "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    return Qwen2VLConfig(text_config=text, vision_config=vision,
                         image_token_id=ids["<|image_pad|>"],
                         video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"],
                         vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def write(folder: Path) -> None:
    import torch
    from transformers import (
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = tokenizer()
    torch.manual_seed(SEED)
    model = Qwen2VLForConditionalGeneration(hf_config(tok)).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS,
                                                           max_pixels=MAX_PIXELS),
                     video_processor=Qwen2VLVideoProcessor(), tokenizer=tok,
                     chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    drop_versions(folder)


def build(out: Path, force: bool = False) -> Path:
    """Write the twin to `out` (atomically, see runner.bundled.tiny.publish); return `out`."""
    return publish(out, FILES, write, force)


def main() -> None:
    cli(__doc__, "data/qwen2-vl-tiny", build, digest)


if __name__ == "__main__":
    main()
