"""Writes a tiny random-weight twin of Pixtral-Large-Instruct-2411-hf-quantized.w4a16.

Same layout as the real checkpoint: Hugging Face Llava (`LlavaForConditionalGeneration`, a Pixtral
vision tower, a Mistral text model), Pixtral-Large's own tokenizer (mistral-common's v7m1
SentencePiece model, converted to `tokenizer.json`), a Pixtral processor, and W4A16 weights in
compressed-tensors `pack-quantized` format written by the compressed-tensors library the way
llm-compressor writes them (vision tower, projector and lm_head left in bf16). Quantization is
round-to-nearest with llm-compressor's min-max scales. Seeded: files are identical every time.

Sizes respect vLLM's CPU kernels: attention head_dim 64, and every quantized linear layer has
input and output sizes that are multiples of 32 with an even group size (CPUWNA16LinearKernel).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from runner.tiny import cli, publish

SEED = 0
GROUP_SIZE = 64  # the real checkpoint uses 128 (llm-compressor's W4A16 preset); 64 gives 2+ groups
TOKENIZER_FILE = "mistral_instruct_tokenizer_241114.model.v7m1"  # Pixtral-Large's tokenizer

TEXT = {"model_type": "mistral", "hidden_size": 128, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 64, "vocab_size": 32768, "max_position_embeddings": 131072,
        "rope_theta": 1000000000.0, "rms_norm_eps": 1e-05, "sliding_window": None,
        "hidden_act": "silu", "tie_word_embeddings": False}
VISION = {"model_type": "pixtral", "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 1, "head_dim": 64,
          "image_size": 1024, "patch_size": 16, "num_channels": 3, "rope_theta": 10000.0,
          "hidden_act": "silu"}
LLAVA = {"image_token_index": 10, "projector_hidden_act": "gelu",
         "multimodal_projector_bias": False,  # Pixtral-Large's projector has no bias
         "vision_feature_layer": -1, "vision_feature_select_strategy": "full",
         "tie_word_embeddings": False}

# Mistral v7 instruct format (Pixtral-Large): images are [IMG] placeholders that vLLM expands.
# Content is walked directly (no macro) so vLLM detects the OpenAI content format.
CHAT_TEMPLATE = """{{- bos_token }}
{%- for message in messages %}
{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' }}
{%- elif message['role'] == 'user' %}{{- '[INST]' }}{%- endif %}
{%- if message['content'] is string %}{{- message['content'] }}
{%- else %}{%- for chunk in message['content'] %}
{%- if chunk['type'] == 'text' %}{{- chunk['text'] }}
{%- elif chunk['type'] in ('image', 'image_url') %}{{- '[IMG]' }}{%- endif %}
{%- endfor %}{%- endif %}
{%- if message['role'] == 'system' %}{{- '[/SYSTEM_PROMPT]' }}
{%- elif message['role'] == 'user' %}{{- '[/INST]' }}
{%- elif message['role'] == 'assistant' %}{{- eos_token }}{%- endif %}
{%- endfor %}"""

FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "processor_config.json", "chat_template.jinja")


def hf_config() -> Any:
    from transformers import LlavaConfig, MistralConfig, PixtralVisionConfig

    text = MistralConfig(**{k: v for k, v in TEXT.items() if k != "model_type"})
    vision = PixtralVisionConfig(**{k: v for k, v in VISION.items() if k != "model_type"})
    cfg = LlavaConfig(text_config=text, vision_config=vision, **LLAVA)
    cfg.architectures = ["LlavaForConditionalGeneration"]
    return cfg


def quant_scheme() -> Any:
    """llm-compressor's W4A16 preset (int4, symmetric, grouped) at GROUP_SIZE."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP_SIZE))


def make_model() -> Any:
    """The HF model with seeded weights (norms 1, biases 0, the rest N(0, 0.05)), in bf16."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("cpu"):
        model = LlavaForConditionalGeneration(hf_config())
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.to(torch.bfloat16).eval()


def quantize(model: Any) -> Any:
    """Attach the scheme, fill round-to-nearest min-max scales, pack to int32 in place.

    Returns the ModelCompressor, whose quantization_config is what llm-compressor writes.
    """
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    qc = QuantizationConfig(config_groups={"group_0": quant_scheme()},
                            ignore=["lm_head", "re:.*vision_tower.*",
                                    "re:.*multi_modal_projector.*"],
                            quantization_status=QuantizationStatus.INITIALIZED)
    apply_quantization_config(model, qc)
    with torch.no_grad():
        for m in model.modules():
            s = getattr(m, "quantization_scheme", None)
            if s is None:
                continue
            scale, zp = compute_dynamic_scales_and_zp(m.weight, s.weights, m)
            m.weight_scale.copy_(scale)
            m.weight_zero_point.copy_(zp)
            m.quantization_status = QuantizationStatus.FROZEN
    comp = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    comp.compress_model(model)
    return comp


def make_tokenizer() -> Any:
    """Pixtral-Large's v7m1 SentencePiece model as an HF fast tokenizer.

    Matches SentencePiece: merges ranked by piece score, a dummy "▁" prefix per text segment,
    splits before each whitespace run (SentencePiece's split_by_whitespace); control tokens
    ([INST], [IMG], ...) are special tokens, so the chat template can write them as text.
    """
    import mistral_common
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    proto = pb.ModelProto()
    proto.ParseFromString((Path(mistral_common.__file__).parent / "data" / TOKENIZER_FILE)
                          .read_bytes())
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    merges = generate_merges(vocab, {p.piece: p.score for p in proto.pieces})
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                        byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("▁+[^▁]*|[^▁]+"), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    # SentencePiece types 2, 3: unknown, control
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type in (2, 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", add_bos_token=False,
                                   model_max_length=131072, chat_template=CHAT_TEMPLATE)


def make_processor(tokenizer: Any) -> Any:
    from transformers import PixtralImageProcessor, PixtralProcessor

    ip = PixtralImageProcessor(size={"longest_edge": VISION["image_size"]},
                               patch_size={"height": 16, "width": 16})
    return PixtralProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=16,
                            chat_template=CHAT_TEMPLATE)


def write(folder: Path) -> None:
    model = make_model()
    comp = quantize(model)
    model.config.dtype = "bfloat16"
    model.save_pretrained(folder)
    comp.update_config(str(folder))  # adds quantization_config, as llm-compressor does
    make_processor(make_tokenizer()).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    # drop the transformers version so the bytes do not depend on the installed release
    cfg.pop("transformers_version", None)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def build(out: Path, force: bool = False) -> Path:
    """Write the twin to `out` (atomically, see runner.tiny.publish); return `out`."""
    return publish(out, FILES, write, force)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


if __name__ == "__main__":
    cli(__doc__, "data/pixtral-large-tiny-w4a16", build, digest)
