"""Quantization: what a checkpoint says, whether the config agrees, what vLLM ended up using.

`read_checkpoint_quant` and `check_quantization` read JSON only (no vLLM, no torch), so a
mismatch is one clear error before the engine starts. runner/engine/probe.py asks a live engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.bundled import ensure_weights
from runner.errors import UserError
from runner.files import read_json

# vLLM quantizes these at load time, so an unquantized checkpoint is fine for them.
ONLINE_METHODS = frozenset({"fp8", "bitsandbytes", "experts_int8"})


def _compressed_tensors(q: dict[str, Any]) -> dict[str, Any]:
    groups = list((q.get("config_groups") or {}).values())
    w = (groups[0].get("weights") or {}) if groups else {}
    a = (groups[0].get("input_activations") or {}) if groups else {}
    fmt = q.get("format") or (groups[0].get("format") if groups else None)
    return {"weight_bits": w.get("num_bits"), "group_size": w.get("group_size"),
            "format": fmt, "strategy": w.get("strategy"), "symmetric": w.get("symmetric"),
            "activation_bits": a.get("num_bits"), "ignored": len(q.get("ignore") or [])}


def parse_quant_config(q: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's quantization_config as {method (vLLM's name), weight_bits, group_size,
    format, ...}; fields a method does not state are None."""
    method = str(q.get("quant_method") or q.get("quantization_method") or "").lower() or None
    if method is None and "config_groups" in q:  # compressed-tensors' older compression_config
        method = "compressed-tensors"
    out: dict[str, Any] = {"method": method, "weight_bits": None, "group_size": None,
                           "format": None}
    if method == "compressed-tensors":
        out |= _compressed_tensors(q)
    elif method in ("awq", "gptq"):
        out |= {"weight_bits": q.get("bits", q.get("w_bit")),
                "group_size": q.get("group_size", q.get("q_group_size")),
                "format": q.get("checkpoint_format") or q.get("version") or method,
                "symmetric": q.get("sym", not q.get("zero_point", False))}
    elif method == "fp8":
        out |= {"weight_bits": 8, "group_size": q.get("weight_block_size"),
                "format": q.get("fmt", "e4m3"), "activation_scheme": q.get("activation_scheme")}
    elif method == "bitsandbytes":
        out |= {"weight_bits": 4 if q.get("load_in_4bit") else 8 if q.get("load_in_8bit")
                else None, "format": q.get("bnb_4bit_quant_type")}
    else:
        out |= {"weight_bits": q.get("bits"), "group_size": q.get("group_size")}
    return out


def read_checkpoint_quant(path: Path) -> dict | None:
    """The quantization a local checkpoint declares, or None for an unquantized one.

    Looks where vLLM looks: config.json `quantization_config` (or compressed-tensors' older
    `compression_config`, or the text model's), then AutoGPTQ/AutoAWQ's side files.
    """
    p = Path(path)
    cfg = read_json(p / "config.json", {})
    q = (cfg.get("quantization_config") or cfg.get("compression_config")
         or (cfg.get("text_config") or {}).get("quantization_config"))
    if not q:
        for side in ("quantize_config.json", "quant_config.json"):  # gptq, awq side files
            q = read_json(p / side, {})
            if q:
                q.setdefault("quant_method", "gptq" if side == "quantize_config.json" else "awq")
                break
    if not q and not cfg:  # Mistral consolidated layout: params.json "quantization"
        q = read_json(p / "params.json", {}).get("quantization")
        if q:
            fp8 = "fp8" in str(q.get("qformat_weight", ""))
            return {"method": "fp8" if fp8 else str(q.get("qformat_weight")),
                    "weight_bits": 8 if fp8 else None, "group_size": None, "format": "mistral"}
    return parse_quant_config(q) if isinstance(q, dict) and q else None


def _compatible(requested: str, method: str) -> bool:
    # vLLM's kernel-specific names accepted for a method's checkpoints: awq_marlin for awq, ...
    return requested == method or requested.startswith(method + "_")


def check_quantization(requested: str | None, path: Path) -> None:
    """Raise UserError if `model.quantization` contradicts the checkpoint at `path`.

    None means "whatever the checkpoint says" (vLLM auto-detects it). A missing checkpoint is
    not judged here (the runner reports missing weights on its own).
    """
    p = Path(path)
    if requested is None or not any((p / f).is_file() for f in ("config.json", "params.json")):
        return
    req = requested.lower()
    q = read_checkpoint_quant(p)
    if q is None:
        if req in ONLINE_METHODS:
            return
        raise UserError(f"model.quantization={requested} but the checkpoint in {p} is not "
                        "quantized: set model.quantization=null (or fp8 / bitsandbytes to "
                        "quantize it at load time).")
    if q["method"] and not _compatible(req, q["method"]):
        raise UserError(f"model.quantization={requested} but the checkpoint in {p} is "
                        f"quantized with {q['method']} (config.json quantization_config): "
                        f"set model.quantization={q['method']} or null.")


def cpu_flags() -> set[str]:
    """This CPU's feature flags (/proc/cpuinfo); empty where that file is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def vllm_cpu_build() -> bool:
    from importlib import metadata

    try:
        metadata.distribution("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        return False


def check_cpu_kernels(path: Path, flags: set[str] | None = None,
                      cpu_build: bool | None = None) -> None:
    """Raise UserError where vLLM's CPU build cannot run a 4-bit weight checkpoint.

    Its W4A16 GEMM (`cpu_gemm_wna16`, used by CPUWNA16LinearKernel) is only in the AVX-512
    libraries of the wheel; on an AVX2-only x86 CPU vLLM picks that kernel anyway and the
    engine dies at its first forward pass (seen here on an AMD EPYC).
    """
    if not (vllm_cpu_build() if cpu_build is None else cpu_build):
        return
    q = read_checkpoint_quant(Path(path))
    if not q or q.get("weight_bits") != 4:
        return
    flags = cpu_flags() if flags is None else flags
    if "avx2" in flags and "avx512f" not in flags:
        raise UserError(f"The checkpoint in {path} has 4-bit weights ({q['method']}), and "
                        "vLLM's CPU build has its W4A16 kernel for AVX-512 CPUs only, while "
                        "this CPU has AVX2: run it on a GPU or an AVX-512 CPU.")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Print a checkpoint's declared quantization.")
    ap.add_argument("path", type=Path)
    print(json.dumps(read_checkpoint_quant(ap.parse_args().path), indent=2))


if __name__ == "__main__":
    main()


def check_model(m: DictConfig) -> None:
    """The weights are there (a bundled model is built), and vLLM can run them here."""
    ensure_weights(m)
    check_quantization(m.quantization, Path(m.path))
    check_cpu_kernels(Path(m.path))
