"""Pixtral-Large W4A16: the tiny HF twin, the quantization check, the real config's engine args.

One engine start (marker `engine`): one run of the quantized twin on the sample set (where the
CPU has the W4A16 kernel; else the refusal before any start). Its determinism across runs is
not tested (a second start would exceed the suite's budget).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_cfg, runner
from runner.bundled import tiny_hf
from runner.engine import engine_kwargs, quant
from runner.errors import UserError

TWIN = ["model=pixtral_large_w4a16_tiny", "engine=cpu"]
IDS = {"bar_chart", "receipt_total", "table_lookup", "compare_shapes", "text_only"}


@pytest.fixture(scope="session")
def twin(tmp_path_factory) -> Path:
    return tiny_hf.build(tmp_path_factory.mktemp("twin") / "pixtral-large-tiny-w4a16")


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape()))
                for k in f.keys()}


# --- the twin -----------------------------------------------------------------------------

@pytest.mark.slow
def test_twin_is_byte_identical_every_time(twin: Path, tmp_path: Path):
    again = tiny_hf.build(tmp_path / "again")
    assert tiny_hf.digest(again) == tiny_hf.digest(twin)
    assert set(tiny_hf.FILES) <= {p.name for p in twin.iterdir()}


@pytest.mark.slow  # builds the twin (seconds)
def test_the_base_twin_is_the_w4a16_twin_before_quantization(twin: Path, tmp_path: Path):
    """model=pixtral_large_tiny: the same config without quantization_config, every weight in
    bf16 where the twin has it packed (the pair a recovery % compares)."""
    base = tiny_hf.build_base(tmp_path / "base")
    q, b = (json.loads((d / "config.json").read_text()) for d in (twin, base))
    assert "quantization_config" not in b and q.pop("quantization_config")
    assert b == q
    tb, tq = tensors(base), tensors(twin)
    assert {d for d, _ in tb.values()} == {"BF16"}
    packed = {k[:-len(".weight_packed")] for k in tq if k.endswith(".weight_packed")}
    assert packed and all(f"{k}.weight" in tb for k in packed)
    assert set(tb) == {k for k in tq if not k.startswith(tuple(packed))} | {
        f"{k}.weight" for k in packed}
    for name in ("tokenizer.json", "processor_config.json", "chat_template.jinja"):
        assert (base / name).read_bytes() == (twin / name).read_bytes()


def test_twin_config_is_llava_pixtral_with_llm_compressor_w4a16(twin: Path):
    cfg = json.loads((twin / "config.json").read_text())
    assert cfg["architectures"] == ["LlavaForConditionalGeneration"]
    assert (cfg["text_config"]["model_type"], cfg["vision_config"]["model_type"]) == (
        "mistral", "pixtral")
    q = cfg["quantization_config"]
    assert (q["quant_method"], q["format"], q["quantization_status"]) == (
        "compressed-tensors", "pack-quantized", "compressed")
    (g,) = q["config_groups"].values()
    assert g["targets"] == ["Linear"] and g["input_activations"] is None
    w = g["weights"]
    assert (w["num_bits"], w["type"], w["symmetric"], w["strategy"], w["group_size"]) == (
        4, "int", True, "group", tiny_hf.GROUP_SIZE)
    # vision tower, projector and lm_head stay unquantized, as in the real checkpoint
    assert "lm_head" in q["ignore"]
    assert any("vision_tower" in n for n in q["ignore"])
    assert any("multi_modal_projector" in n for n in q["ignore"])
    assert not any("language_model" in n for n in q["ignore"])


def test_twin_weights_are_packed_where_quantized_and_fit_the_cpu_kernel(twin: Path):
    t = tensors(twin)
    packed = {k.removesuffix(".weight_packed"): s for k, (d, s) in t.items()
              if k.endswith(".weight_packed")}
    assert len(packed) == 7 * tiny_hf.TEXT["num_hidden_layers"]
    assert all(k.startswith("language_model.model.layers.") for k in packed)
    for name, (rows, cols) in packed.items():
        out_f, in_f = _shape(twin, name)
        assert (rows, cols * 8) == (out_f, in_f)  # eight int4 values per int32
        assert out_f % 32 == 0 and in_f % 32 == 0  # CPUWNA16LinearKernel's limits
        assert t[name + ".weight_scale"] == ("BF16", (out_f, in_f // tiny_hf.GROUP_SIZE))
    assert tiny_hf.GROUP_SIZE % 2 == 0
    assert t["language_model.lm_head.weight"][0] == "BF16"
    assert all(d == "BF16" for k, (d, _) in t.items()
               if k.startswith(("vision_tower.", "multi_modal_projector.")))
    assert tiny_hf.TEXT["head_dim"] == 64 == tiny_hf.VISION["head_dim"]  # CPU attention


def _shape(twin: Path, name: str) -> tuple[int, int]:
    from safetensors import safe_open

    with safe_open(str(twin / "model.safetensors"), "pt") as f:
        return tuple(f.get_tensor(name + ".weight_shape").tolist())  # type: ignore[return-value]


def test_packed_weights_are_round_to_nearest_of_the_seeded_weights(twin: Path):
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors import safe_open

    ref = dict(tiny_hf.make_model().named_parameters())
    name = "language_model.model.layers.1.mlp.down_proj"
    with safe_open(str(twin / "model.safetensors"), "pt") as f:
        packed, scale = f.get_tensor(name + ".weight_packed"), f.get_tensor(name + ".weight_scale")
        shape = torch.Size(f.get_tensor(name + ".weight_shape").tolist())
    q = unpack_from_int32(packed, 4, shape)
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    w = (q.float().unflatten(-1, (-1, tiny_hf.GROUP_SIZE))
         * scale.float().unsqueeze(-1)).flatten(-2)
    orig = ref["model.language_model.layers.1.mlp.down_proj.weight"].float()
    err = (w - orig).abs().unflatten(-1, (-1, tiny_hf.GROUP_SIZE))
    assert bool((err <= scale.float().unsqueeze(-1) / 2 + 1e-3).all())


def test_twin_tokenizer_matches_pixtral_large_sentencepiece(twin: Path):
    import mistral_common
    import sentencepiece as spm
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(
        Path(mistral_common.__file__).parent / "data" / tiny_hf.TOKENIZER_FILE))
    tok = AutoTokenizer.from_pretrained(str(twin))
    texts = [it["text"] for it in yaml.safe_load((ROOT / "prompts/sample/set.yaml").read_text())
             ["items"]]
    texts += ["a  b   c", "  leading", "trailing  ", "tabs\tand\nnewlines", "日本語 🦙 émigré"]
    for s in texts:
        assert tok.encode(s, add_special_tokens=False) == sp.encode(s), s
    assert tok.convert_tokens_to_ids(["[IMG]", "[IMG_BREAK]", "[IMG_END]"]) == [10, 14, 15]
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]}],
        tokenize=False)
    assert prompt == "<s>[INST]Hi[IMG][/INST]"


# --- reading and checking a checkpoint's quantization -------------------------------------

def test_read_checkpoint_quant_of_the_twin(twin: Path):
    q = quant.read_checkpoint_quant(twin)
    assert q is not None
    assert {k: q[k] for k in ("method", "weight_bits", "group_size", "format")} == {
        "method": "compressed-tensors", "weight_bits": 4, "group_size": tiny_hf.GROUP_SIZE,
        "format": "pack-quantized"}


def write_config(folder: Path, q: dict | None, side: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlavaForConditionalGeneration"]}
    if q is not None and side is None:
        cfg["quantization_config"] = q
    (folder / "config.json").write_text(json.dumps(cfg))
    if side:
        (folder / side).write_text(json.dumps(q))
    return folder


@pytest.mark.parametrize("q, side, expect", [
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"}, None,
     ("awq", 4, 128, "gemm")),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}, None,
     ("gptq", 4, 128, "gptq")),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, None, ("fp8", 8, None, "e4m3")),
    ({"bits": 4, "group_size": 64, "sym": True}, "quantize_config.json", ("gptq", 4, 64, "gptq")),
    ({"config_groups": {"g": {"weights": {"num_bits": 8, "group_size": None}}},
      "format": "int-quantized"}, None, ("compressed-tensors", 8, None, "int-quantized")),
])
def test_read_checkpoint_quant_methods(tmp_path: Path, q, side, expect):
    r = quant.read_checkpoint_quant(write_config(tmp_path / "m", q, side))
    assert r is not None
    assert (r["method"], r["weight_bits"], r["group_size"], r["format"]) == expect


def test_unquantized_checkpoints_read_as_none(tmp_path: Path):
    assert quant.read_checkpoint_quant(write_config(tmp_path / "hf", None)) is None
    (tmp_path / "mistral").mkdir()
    (tmp_path / "mistral" / "params.json").write_text(json.dumps({"dim": 128}))
    assert quant.read_checkpoint_quant(tmp_path / "mistral") is None


def test_check_quantization_accepts_what_the_checkpoint_says(twin: Path, tmp_path: Path):
    """Each call would raise UserError on a mismatch; the checkpoints are what we think."""
    assert quant.read_checkpoint_quant(twin)["method"] == "compressed-tensors"
    quant.check_quantization(None, twin)
    quant.check_quantization("compressed-tensors", twin)
    awq = write_config(tmp_path / "awq", {"quant_method": "awq", "bits": 4})
    assert quant.read_checkpoint_quant(awq)["method"] == "awq"
    quant.check_quantization("awq_marlin", awq)  # vLLM's kernel-specific name for awq
    plain = write_config(tmp_path / "plain", None)
    assert quant.read_checkpoint_quant(plain) is None
    quant.check_quantization("fp8", plain)  # vLLM quantizes it at load time
    quant.check_quantization("awq", tmp_path / "missing")  # missing weights: reported elsewhere


def test_mismatch_is_one_clear_error(twin: Path, tmp_path: Path):
    with pytest.raises(UserError) as e:
        quant.check_quantization("awq", twin)
    msg = str(e.value)
    assert "model.quantization=awq" in msg and "compressed-tensors" in msg and str(twin) in msg
    assert msg.count(". ") == 0 and "\n" not in msg  # one sentence
    plain = write_config(tmp_path / "plain", None)
    with pytest.raises(UserError, match="not quantized"):
        quant.check_quantization("compressed-tensors", plain)


def test_cli_mismatch_exits_2_before_the_engine(twin: Path, tmp_path: Path):
    p = runner(*TWIN, f"model.path={twin}", "model.quantization=awq",
               f"store.root={tmp_path}", timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "model.quantization=awq" in p.stderr and "compressed-tensors" in p.stderr
    assert "Traceback" not in p.stderr
    assert not [d for d in tmp_path.iterdir() if not d.name.startswith(".")]


# --- the real checkpoint's config, as a GPU user gets it ----------------------------------

def test_real_pixtral_large_w4a16_engine_arguments():
    kw = engine_kwargs(make_cfg("model=pixtral_large_w4a16"), Path("/sets/sample"))
    assert kw == {
        "model": str(Path("data/Pixtral-Large-Instruct-2411-hf-quantized.w4a16").resolve()),
        "tokenizer_mode": "auto", "config_format": "hf", "load_format": "auto",
        "quantization": "compressed-tensors", "trust_remote_code": False,
        "max_model_len": 32768, "limit_mm_per_prompt": {"image": 4},
        "tensor_parallel_size": 4, "pipeline_parallel_size": 1, "gpu_memory_utilization": 0.9,
        "enforce_eager": False, "dtype": "auto", "seed": 0,
        "allowed_local_media_path": "/sets/sample",
    }
    kw2 = engine_kwargs(make_cfg("model=pixtral_large_w4a16", "engine.tensor_parallel_size=2",
                                 "model.path=/models/pl"), Path("/x"))
    assert (kw2["model"], kw2["tensor_parallel_size"]) == ("/models/pl", 2)


def test_tiny_twin_config_mirrors_the_real_one():
    real, tiny = make_cfg("model=pixtral_large_w4a16").model, make_cfg(*TWIN).model
    for k in ("tokenizer_mode", "config_format", "load_format", "quantization",
              "limit_mm_per_prompt"):
        assert tiny[k] == real[k], k
    assert tiny.build == "tiny_hf" and tiny.path == "data/pixtral-large-tiny-w4a16"


# --- end to end through real vLLM on CPU (one engine start) -------------------------------

# vLLM's CPU build has its W4A16 kernel in its AVX-512 libraries only (check_cpu_kernels).
FLAGS = quant.cpu_flags()
W4A16_HERE = "avx512f" in FLAGS or "avx2" not in FLAGS
REFUSED = "vLLM's CPU build has its W4A16 kernel for AVX-512 CPUs only"


def run_twin(twin: Path, store: Path) -> Path | None:
    """The run folder; None on an AVX2-only CPU, where the runner must refuse the twin in one
    sentence before any engine starts, and write nothing."""
    p = runner(*TWIN, f"model.path={twin}", f"store.root={store}", timeout=900)
    if not W4A16_HERE:
        assert p.returncode == 2, p.stderr[-4000:]
        assert REFUSED in " ".join(p.stderr.split()) and "Traceback" not in p.stderr
        assert not [d for d in store.glob("*") if not d.name.startswith(".")]
        return None
    assert p.returncode == 0, p.stderr[-4000:]
    (d,) = [d for d in store.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return d


def test_cpu_kernel_check(twin: Path, tmp_path: Path):
    with pytest.raises(UserError, match=REFUSED):
        quant.check_cpu_kernels(twin, flags={"sse4_2", "avx2"}, cpu_build=True)
    quant.check_cpu_kernels(twin, flags={"avx2", "avx512f"}, cpu_build=True)  # AVX-512
    quant.check_cpu_kernels(twin, flags={"avx2"}, cpu_build=False)  # vLLM's GPU build
    quant.check_cpu_kernels(twin, flags={"asimd"}, cpu_build=True)  # not x86
    plain = write_config(tmp_path / "plain", None)
    quant.check_cpu_kernels(plain, flags={"avx2"}, cpu_build=True)  # not quantized


def results(d: Path) -> dict[str, dict]:
    rs = [json.loads(line) for line in (d / "results.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rs}


@pytest.fixture(scope="session")
def twin_run(twin: Path, tmp_path_factory) -> Path | None:
    return run_twin(twin, tmp_path_factory.mktemp("store"))


@pytest.mark.engine
def test_quantized_twin_runs_the_sample_set(twin_run: Path | None):
    d = twin_run
    if d is None:  # AVX2 only: the refusal is asserted in run_twin; the twin never ran
        assert not W4A16_HERE
        pytest.skip("an AVX2-only CPU: vLLM's CPU build has no W4A16 kernel here, so the twin "
                    "cannot run (only the runner's refusal of it was checked)")
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete" and m["model"] == "pixtral-large-tiny-w4a16"
    assert m["counts"] == {"planned": 5, "stored": 5, "computed": 5, "errors": 0,
                           "errors_by_kind": {}}
    rs = results(d)
    assert set(rs) == IDS
    for r in rs.values():
        assert r["status"] == "ok" and r["completion_tokens"] > 0
    # images reach the model through the HF Pixtral processor: [IMG] rows per 16 px patch
    assert rs["bar_chart"]["prompt_tokens"] > rs["text_only"]["prompt_tokens"] + 200
    assert rs["compare_shapes"]["prompt_tokens"] > rs["bar_chart"]["prompt_tokens"]
    q = m["quantization"]
    assert (q["method"], q["weight_bits"], q["group_size"]) == (
        "compressed-tensors", 4, tiny_hf.GROUP_SIZE)
    assert q["kernel"] is None or q["kernel"].endswith("WNA16LinearKernel")  # CPU or Zen
    # read from the loaded layers (runner/engine/probe.py): each linear layer's quant_method,
    # and the scheme compressed-tensors puts on the quantized ones; the ignored vision tower,
    # projector and lm_head stay unquantized
    assert q["scheme"] == "CompressedTensorsWNA16", q
    assert q["quantized_linear_layers"] > 0 and q["unquantized_linear_layers"] > 0, q
