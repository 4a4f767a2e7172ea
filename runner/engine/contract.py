"""Every vLLM (and mistral-common) internal the runner touches, each with a check that needs
no engine start. tests/test_engine_contract.py runs them: when a release moves one, the test
fails and names it. `vllm` is pinned to the minor these were checked against (pyproject.toml).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

# The vLLM minor the internals below were checked against; pyproject.toml's `gpu` extra pins it.
# The in-process engine refuses any other (runner/engine/vllm_engine.py: check_version).
TESTED_MINOR = (0, 32)


def obj(ref: str) -> Any:
    """`package.module:Class.attr` -> the object."""
    mod, _, attrs = ref.partition(":")
    o: Any = importlib.import_module(mod)
    for a in filter(None, attrs.split(".")):
        o = getattr(o, a)
    return o


def takes(ref: str, *params: str) -> Callable[[], bool]:
    return lambda: set(params) <= set(inspect.signature(obj(ref)).parameters)


def has(ref: str) -> Callable[[], bool]:
    return lambda: obj(ref) is not None


def fields(ref: str, *names: str) -> Callable[[], bool]:
    return lambda: set(names) <= {f.name for f in dataclasses.fields(obj(ref))}


def sets(ref: str, *attrs: str) -> Callable[[], bool]:
    """The class's __init__ assigns these attributes (instances only: no engine here)."""
    return lambda: all(re.search(rf"self\.{a}\s*(:[^=\n]*)?=", inspect.getsource(
        obj(ref).__init__)) for a in attrs)


@cache
def _vllm_source() -> str:
    root = Path(obj("vllm").__file__).parent
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*.py"))


def logs(*texts: str) -> Callable[[], bool]:
    """vLLM's source still writes these log texts (what START_PHASES matches)."""
    return lambda: all(t in _vllm_source() for t in texts)


def request_id_format() -> bool:
    """enqueue_chat returns vLLM's internal id "<external>-<random>"; outputs carry the
    external one: vllm_engine.py maps them by the part before the first "-"."""
    src = inspect.getsource(obj("vllm.v1.engine.input_processor"))
    return re.search(r'request_id = f"\{request\.external_req_id\}-\{random_uuid\(\)', src) \
        is not None


CORE = "vllm.v1.engine.core_client"
INTERNALS: dict[str, Callable[[], bool]] = {
    # vllm_engine.py: requests in, outputs out
    "LLM.enqueue_chat(messages, sampling_params, use_tqdm)":
        takes("vllm:LLM.enqueue_chat", "messages", "sampling_params", "use_tqdm"),
    "LLM.get_metrics()": has("vllm:LLM.get_metrics"),
    "LLM.collective_rpc(method)": takes("vllm:LLM.collective_rpc", "method"),
    "LLM.llm_engine": sets("vllm:LLM", "llm_engine"),
    "LLMEngine.step()": has("vllm.v1.engine.llm_engine:LLMEngine.step"),
    "LLMEngine.has_unfinished_requests()":
        has("vllm.v1.engine.llm_engine:LLMEngine.has_unfinished_requests"),
    "LLMEngine.engine_core, .vllm_config, .model_config":
        sets("vllm.v1.engine.llm_engine:LLMEngine", "engine_core", "vllm_config",
             "model_config"),
    "SchedulerConfig.max_num_seqs": fields("vllm.config:SchedulerConfig", "max_num_seqs"),
    "ParallelConfig.worker_extension_cls":
        fields("vllm.config:ParallelConfig", "worker_extension_cls"),
    "request id format '<external>-<random>' (input_processor.py)": request_id_format,
    "EngineDeadError": has("vllm.v1.engine.exceptions:EngineDeadError"),
    "SamplingParams, StructuredOutputsParams":
        lambda: has("vllm:SamplingParams")() and has(
            "vllm.sampling_params:StructuredOutputsParams")(),
    "EngineArgs (a dataclass: engine.extra is checked against its fields)":
        lambda: dataclasses.is_dataclass(obj("vllm.engine.arg_utils:EngineArgs")),
    # watchdog.py: the engine core's processes, dead flag and output queue
    "MPClient.resources": sets(f"{CORE}:MPClient", "resources"),
    "MPClient.shutdown(timeout)": takes(f"{CORE}:MPClient.shutdown", "timeout"),
    "SyncMPClient.outputs_queue.put_nowait": sets(f"{CORE}:SyncMPClient", "outputs_queue"),
    "BackgroundResources.engine_manager, .engine_dead":
        fields(f"{CORE}:BackgroundResources", "engine_manager", "engine_dead"),
    "CoreEngineProcManager.processes": sets("vllm.v1.engine.utils:CoreEngineProcManager",
                                            "processes"),
    "InprocClient (the in-process engine core: no watchdog)": has(f"{CORE}:InprocClient"),
    # vllm_engine.py drop(): the engine killed at the end of the command, quietly
    "CoreEngineProcManager._finalizer (its monitor's shutdown, detached)":
        sets("vllm.v1.engine.utils:CoreEngineProcManager", "_finalizer"),
    "WorkerBase.distributed_init_method (the file store drop() removes)":
        sets("vllm.v1.worker.worker_base:WorkerBase", "distributed_init_method"),
    "VLLM_RPC_BASE_PATH (where vLLM's ZeroMQ socket files go)":
        lambda: "VLLM_RPC_BASE_PATH" in obj("vllm.envs").environment_variables,
    # probe.py: the linear kernels a worker built
    "LinearBase, UnquantizedLinearMethod":
        lambda: has("vllm.model_executor.layers.linear:LinearBase")() and has(
            "vllm.model_executor.layers.linear:UnquantizedLinearMethod")(),
    "Worker.get_model() (CPU and GPU workers)":
        lambda: has("vllm.v1.worker.cpu_model_runner:CPUModelRunner.get_model")() and has(
            "vllm.v1.worker.gpu_model_runner:GPUModelRunner.get_model")(),
    # vllm_engine.py START_PHASES: the start phases shown beside the spinner
    "log texts of the start phases": logs(
        "Resolved architecture", "Initializing a V1 LLM engine", "Starting to load model",
        "Loading safetensors", "KV cache size", "init engine (profile"),
    # serving.py / server.py: vLLM's OpenAI-compatible server, as runner.serve starts it
    "vllm.entrypoints.openai.api_server (run as a module)":
        has("vllm.entrypoints.openai.api_server:run_server"),
    "EngineArgs.get_batch_defaults(world_size) keyed by UsageContext.LLM_CLASS":
        lambda: takes("vllm.engine.arg_utils:EngineArgs.get_batch_defaults", "world_size")()
        and has("vllm.usage.usage_lib:UsageContext.LLM_CLASS")(),
    "api_server options --config (YAML), --served-model-name, --generation-config":
        lambda: all(t in _vllm_source() for t in ('"--config"', "served_model_name",
                                                   "generation_config")),
    "ChatCompletionRequest fields the client sends":
        lambda: {"messages", "model", "n", "temperature", "top_p", "top_k", "min_p",
                 "max_tokens", "min_tokens", "seed", "stop", "repetition_penalty",
                 "presence_penalty", "frequency_penalty", "ignore_eos", "structured_outputs",
                 "return_token_ids"} <= set(obj(
                     "vllm.entrypoints.openai.chat_completion.protocol:ChatCompletionRequest"
                 ).model_fields),
    "ModelCard.max_model_len (/v1/models)":
        lambda: "max_model_len" in obj(
            "vllm.entrypoints.serve.engine.protocol:ModelCard").model_fields,
    # tokenizer.py: vLLM's frontend handed the token plan's Mistral tokenizer
    "transformers MistralCommonBackend builds its tokenizer by the name "
    "MistralTokenizer.from_file(path, mode=...)":
        lambda: has("transformers.tokenization_mistral_common:MistralTokenizer.from_file")()
        and "MistralTokenizer.from_file(str(self._tokenizer_path), mode=self._mode)" in
        inspect.getsource(obj("transformers.tokenization_mistral_common:MistralCommonBackend"
                              ".__init__"))
        and "MistralCommonBackend.from_pretrained(" in inspect.getsource(
            obj("vllm.tokenizers.mistral:MistralTokenizer.from_pretrained")),
    # tokens.py: exact image token counts, as mistral-common counts them
    "mistral_common ImageEncoder._image_to_num_tokens(img)":
        takes("mistral_common.tokens.tokenizers.image:ImageEncoder._image_to_num_tokens",
              "img"),
}


def broken() -> dict[str, str]:
    """The internals that moved, each with what went wrong."""
    out = {}
    for name, check in INTERNALS.items():
        try:
            ok = check()
        except Exception as e:  # noqa: BLE001 - a missing module, class or attribute
            out[name] = f"{type(e).__name__}: {e}"
            continue
        if not ok:
            out[name] = "not found in the installed version"
    return out
