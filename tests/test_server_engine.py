"""Runs through a real vLLM server: ONE `python -m runner.serve` (vLLM's api_server, one real
engine start) for this module, with the session engine's arguments (conftest.REAL). The
runner's own handling of a server (timeouts, deaths, checks) is in test_server.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from conftest import REAL, ROOT, make_cfg, runner, wait_for
from runner.engine.args import engine_kwargs
from runner.engine.server_state import alive, read_state, state_path

pytestmark = pytest.mark.engine


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
    the in-process engine's, token for token."""
    from runner.engine.vllm_engine import make_params
    from runner.plan.load import load_plan
    from runner.plan.sampling import sampling_of

    r = runner(*served.args, "engine.url=serve", "engine.max_num_seqs=1")
    assert r.returncode == 0, r.stdout + r.stderr
    rs = records(served.store)
    (d,) = {p.parent for p in served.store.glob("*/results.jsonl")}
    m = json.loads((d / "manifest.json").read_text())
    assert m["server"]["started_by"] == "runner.serve" and m["server"]["in_flight"] == 1
    assert m["server"]["trust_server"] is False

    # The session engine, as a job with these arguments gets it (started here if no test has
    # yet; a run of the sample config would make test_real_engine's run a cache hit).
    cfg = make_cfg(*REAL, f"prompts.root={real.prompts}")
    env = OmegaConf.to_container(cfg.engine.env, resolve=True)
    engine, _, _ = real.slot.get(engine_kwargs(cfg, real.prompts.resolve()), env)
    llm, params = engine.llm, make_params(sampling_of(cfg))
    plan = load_plan(cfg)
    assert set(rs) == {it.id for it in plan.items}
    for it in plan.items:
        (o,) = llm.chat([it.messages], params, use_tqdm=False)
        c, x = o.outputs[0], rs[it.id]
        assert (x["output"], x["finish_reason"], x["completion_tokens"], x["prompt_tokens"]) \
            == (c.text, c.finish_reason, len(c.token_ids), len(o.prompt_token_ids)), it.id


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
    assert row["metric"] == "judge mm_mt_bench_forced: micro average", row
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
    them for each sample's token count)."""
    import urllib.request

    from runner.engine.connect import healthy

    url = served.state["url"]
    assert healthy(url)
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


def test_a_submit_to_a_dead_engine_is_a_death_not_an_item_error(real):
    """The session engine's last use (no later test file uses it): its engine core SIGKILLed,
    vLLM flags it dead, then a submit is held as unsent (not stored as an item error) and
    events() raises EngineDied naming it, with the core's own end as the reason."""
    from runner.engine.vllm_engine import VllmEngine
    from runner.errors import EngineDied

    engine = real.slot.engine
    if engine is None:  # this file ran alone: the session engine starts here
        cfg = make_cfg(*REAL, f"prompts.root={real.prompts}")
        env = OmegaConf.to_container(cfg.engine.env, resolve=True)
        engine, _, _ = real.slot.get(engine_kwargs(cfg, real.prompts.resolve()), env)
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
