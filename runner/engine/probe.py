"""What a live vLLM engine ended up using for quantization: the method it chose and the
linear kernel its workers built (asked through a worker extension, without pickling code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runner.engine.quant import parse_quant_config, read_checkpoint_quant


class QuantProbe:
    """vLLM worker extension (engine argument worker_extension_cls=...QuantProbe)."""

    def runner_quant_kernels(self) -> dict[str, Any]:
        return layer_kernels(self.model_runner.get_model())  # type: ignore[attr-defined]

    def runner_temp_files(self) -> list[str]:
        """The files this worker would remove on a graceful exit: torch.distributed's file
        store (vLLM's `file://<tmp>/vllm_dist_<hex>` rendezvous)."""
        method = str(getattr(self, "distributed_init_method", None) or "")
        return [method.removeprefix("file://")] if method.startswith("file://") else []


def layer_kernels(model: Any) -> dict[str, Any]:
    """Scheme and kernel class names of the quantized linear layers in a vLLM model."""
    from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod

    kernels: set[str] = set()
    schemes: set[str] = set()
    n_quant = n_plain = 0
    for m in model.modules():
        if not isinstance(m, LinearBase):
            continue
        qm = getattr(m, "quant_method", None)
        if qm is None or isinstance(qm, UnquantizedLinearMethod):
            n_plain += 1
            continue
        n_quant += 1
        scheme = getattr(m, "scheme", None)  # compressed-tensors puts its scheme on the layer
        schemes.add(type(scheme or qm).__name__)
        k = getattr(scheme, "kernel", None) or getattr(qm, "kernel", None)
        if k is not None:
            kernels.add(type(k).__name__)
    return {"kernel": ",".join(sorted(kernels)) or None,
            "scheme": ",".join(sorted(schemes)) or None,
            "quantized_linear_layers": n_quant, "unquantized_linear_layers": n_plain}


def _kernels(llm: Any, probe: str) -> dict[str, Any] | None:
    # Ask only an engine that has the extension: a failed RPC logs worker tracebacks.
    if llm.llm_engine.vllm_config.parallel_config.worker_extension_cls == probe:
        try:
            return llm.collective_rpc("runner_quant_kernels")[0]
        except Exception:  # noqa: BLE001 - best effort
            return None
    if os.environ.get("VLLM_ALLOW_INSECURE_SERIALIZATION") == "1":
        try:
            return llm.apply_model(layer_kernels)[0]
        except Exception:  # noqa: BLE001 - best effort
            pass
    return None


def temp_files(llm: Any, probe: str) -> list[str] | None:
    """What the workers would remove on a graceful exit (QuantProbe.runner_temp_files); None
    when the engine cannot say (no probe)."""
    if llm.llm_engine.vllm_config.parallel_config.worker_extension_cls != probe:
        return None
    try:
        return [f for files in llm.collective_rpc("runner_temp_files") for f in files]
    except Exception:  # noqa: BLE001 - best effort: None means "shut down gracefully"
        return None


def describe(llm: Any, probe: str) -> dict[str, Any]:
    """Quantization of a live vLLM engine: method (vLLM's), weight bits, group size, format,
    and the linear kernel/scheme in use (None when vLLM does not tell)."""
    mc = llm.llm_engine.model_config
    q = getattr(mc.hf_config, "quantization_config", None)
    if hasattr(q, "to_dict"):
        q = q.to_dict()
    info = parse_quant_config(q) if isinstance(q, dict) and q else (
        read_checkpoint_quant(Path(mc.model)) if Path(str(mc.model)).is_dir() else None)
    out: dict[str, Any] = {"weight_bits": None, "group_size": None, "format": None} | (info or {})
    out["method"] = mc.quantization  # what vLLM chose (e.g. awq_marlin for an awq checkpoint)
    out["checkpoint_method"] = (info or {}).get("method")
    out |= _kernels(llm, probe) or {"kernel": None, "scheme": None}
    return out
