"""`python -m runner` in real processes, for paths that must not start (or import) vLLM."""

from pathlib import Path

import pytest

from conftest import ROOT, TINY, runner

HEAVY = ("vllm", "torch", "matplotlib")  # imported lazily, only by what needs them


def imported_heavy(stderr: str) -> bool:
    """Whether `-X importtime` output shows vLLM, torch or matplotlib imported."""
    return any(line.rsplit("|", 1)[-1].strip().split(".")[0] in HEAVY
               for line in stderr.splitlines() if line.startswith("import time:"))


@pytest.mark.parametrize("module,imported", [("vllm.engine", True), ("torch", True),
                                              ("matplotlib", True), ("json", False),
                                              ("vllmish", False)])
def test_imported_heavy_sees_an_import_it_is_shown(tmp_path: Path, module: str, imported: bool):
    """The detector's positive control, on real `-X importtime` output: stand-in packages
    named vllm, torch and matplotlib (so no 5 s import of the real ones), imported in a real
    process."""
    import subprocess
    import sys

    for name in ("vllm", "vllm/engine", "torch", "matplotlib", "vllmish"):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / "__init__.py").write_text("")
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                       cwd=tmp_path, text=True, capture_output=True, timeout=60,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert imported_heavy(p.stderr) is imported


def test_help_and_cfg_job_do_not_import_vllm():
    import subprocess
    import sys

    for args in (["--help"], ["--cfg", "job", "model=pixtral_large_w4a16"]):
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *args],
                           cwd=ROOT, text=True, capture_output=True, timeout=60)
        assert p.returncode == 0, p.stderr[-2000:]
        assert not imported_heavy(p.stderr)
    assert "tensor_parallel_size: 4" in p.stdout and "compressed-tensors" in p.stdout


def test_missing_weights_is_one_sentence_and_writes_nothing(tmp_path: Path):
    out = tmp_path / "out"
    p = runner("model.path=/nowhere/Pixtral-12B-2409", f"store.root={out}")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr + p.stdout
    msg = " ".join(p.stderr.split())
    assert "/nowhere/Pixtral-12B-2409 does not exist" in msg
    assert "mistralai/Pixtral-12B-2409" in msg and "model.path=" in msg
    assert not out.exists()


def test_a_dry_run_before_the_download_plans_and_says_what_is_missing(tmp_path: Path):
    p = runner("dry_run=true", "model.path=/nowhere/Pixtral-12B-2409", f"store.root={tmp_path}")
    assert p.returncode == 0, p.stderr[-2000:]
    msg = " ".join(p.stderr.split())
    assert "/nowhere/Pixtral-12B-2409 does not exist" in msg
    assert "hf download mistralai/Pixtral-12B-2409 --local-dir /nowhere/Pixtral-12B-2409" in msg
    assert "modelscope download --model mistralai/Pixtral-12B-2409" in msg
    assert "tokenizer not there yet" in msg and "not a Mistral-format model" not in msg
    assert "plan · sample" in msg and "5 planned" in msg  # the plan is still shown


def test_a_dry_run_checks_engine_extra_without_vllm(tmp_path: Path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *TINY,
                        "dry_run=true", "+engine.extra.kv_cache_dtyp=fp8",
                        f"store.root={tmp_path}"], cwd=ROOT, text=True, capture_output=True,
                       timeout=120)
    assert p.returncode == 2
    assert "Not a vLLM engine argument: kv_cache_dtyp (did you mean kv_cache_dtype?)" in \
        " ".join(p.stderr.split())
    assert not imported_heavy(p.stderr)


def test_unknown_prompt_set_exits_2(tmp_path: Path):
    p = runner(*TINY, "prompts.name=nope", f"store.root={tmp_path}")
    assert p.returncode == 2 and "Unknown prompt set 'nope'" in p.stderr
    assert "Traceback" not in p.stderr and not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, needle", [
    (["model=pixtral_13b"], "pixtral_13b"),
    (["sampling.temprature=0.5"], "temprature"),
])
def test_composition_errors_name_the_key(args, needle):
    p = runner(*args)
    assert p.returncode != 0 and needle in p.stderr
    assert "Traceback" not in p.stderr


def test_dry_run_plans_without_engine(tmp_path: Path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *TINY, "dry_run=true",
                        f"store.root={tmp_path}"], cwd=ROOT, text=True, capture_output=True)
    assert p.returncode == 0 and "planned" in p.stderr and "5 planned" in p.stderr
    assert not imported_heavy(p.stderr) and not any(tmp_path.iterdir())
    # the runner's lines only: no third-party chatter (mistral-common's tokenizer loading)
    shown = [x for x in (p.stdout + p.stderr).splitlines() if not x.startswith("import time:")]
    assert not [x for x in shown if "special tokens" in x or "vocabulary" in x], shown
