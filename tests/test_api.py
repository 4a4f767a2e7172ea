"""Hosted models through an OpenAI-compatible API (model.api, docs/api.md), against the
stand-in server (tests/standin_server.py) playing the API: it requires the key, answers 429
and 503 with Retry-After now and then, drops one connection, echoes the request's headers in
one refusal. Nothing is lost, nothing answered twice, the key is found nowhere in the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_server import manifest, records, text_set

from conftest import ROOT, make_cfg, output, run_dirs_of, runner, spawn, wait_for
from runner.store.rundir import run_hash

pytestmark = pytest.mark.process  # the runner's processes, a stand-in API: full lane

KEY = "sk-standin-0123456789abcdefSECRET"
ENV = "RUNNER_TEST_API_KEY"
LIMITED, BUSY, DROP, ECHO = "XQZLIMITQZX", "XQZBUSYQZX", "XQZDROPQZX", "XQZECHOQZX"
RATE = {"status": 429, "headers": {"Retry-After": "1"},
        "body": '{"error": {"message": "rate limited"}}'}
BUSY_503 = {"status": 503, "headers": {"Retry-After": "0"},
            "body": '{"error": {"message": "overloaded"}}'}


def served(log: Path) -> list[str]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def store_bytes(store: Path) -> bytes:
    return b"".join(f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file())


def api_args(url: str, store: Path, prompts: Path, *more: str) -> list[str]:
    return ["model=gpt_4o", f"model.api.url={url}/v1", f"model.api.key_env={ENV}",
            "model.api.provider=standin", f"store.root={store}", f"prompts.root={prompts}",
            "prompts.name=texts", "sampling.max_tokens=8", *more]


def test_a_run_against_the_api_stores_every_item_once_through_429s_and_a_lost_connection(
        standins, tmp_path: Path):
    log = tmp_path / "served.jsonl"
    url, _ = standins({"name": "gpt-4o-2024-05-13", "key": KEY, "served": str(log),
                       "fingerprint": "fp_standin1", "drop_once": DROP,
                       "answers": {LIMITED: [RATE, RATE], BUSY: [BUSY_503],
                                   ECHO: [{"status": 400, "body": None}]}})
    prompts = text_set(tmp_path / "p", 10, {1: LIMITED, 4: BUSY, 6: DROP, 8: ECHO})
    store = tmp_path / "store"
    args = api_args(url, store, prompts, "model.api.in_flight=3", "model.api.price_prompt=2.5",
                    "model.api.price_completion=10")
    r = runner(*args, env={ENV: KEY})
    assert r.returncode == 0, r.stdout + r.stderr
    recs = records(store)
    assert sorted(x["id"] for x in recs) == [f"t{i:02d}" for i in range(10)]  # each once
    by = {x["id"]: x for x in recs}
    assert all(by[i]["status"] == "ok" for i in by if i != "t08"), recs
    # the refusal that echoed the request's headers is stored without the key
    assert by["t08"]["status"] == "error" and "[redacted]" in by["t08"]["error"]
    # every item but the refused one answered exactly once: the 429s, the 503 and the lost
    # connection were asked again, nothing answered twice
    texts = served(log)
    assert len(texts) == len(set(texts)) == 9
    m = manifest(store)
    s = m["server"]
    assert s["api"] is True and s["url"] == f"{url}/v1" and s["provider"] == "standin"
    assert s["reported"] == {"model": ["gpt-4o-2024-05-13"], "system_fingerprint": ["fp_standin1"]}
    assert s["rate_limited"] == 3 and s["waited_s"] == 2  # Retry-After: 1, 1 and 0
    assert s["resent_after_lost_connection"] == 1
    u = m["api_usage"]
    assert u["outputs"] == 9
    assert u["prompt_tokens"] == sum(by[i]["prompt_tokens"] for i in by if i != "t08")
    assert u["completion_tokens"] == 9 * 3  # the stand-in's 3 tokens an answer
    assert u["estimated_cost_usd"] == pytest.approx(
        (u["prompt_tokens"] * 2.5 + u["completion_tokens"] * 10) / 1e6)
    assert KEY.encode() not in store_bytes(store)
    assert KEY not in r.stdout + r.stderr


def test_the_hash_is_the_model_id_and_provider_not_the_url_or_key():
    base = ["model=gpt_4o", "model.api.url='https://a.example/v1?token=x'"]
    h = run_hash(make_cfg(*base))
    assert run_hash(make_cfg(*base[:1], "model.api.url=https://b.example/v1")) == h
    assert run_hash(make_cfg(*base, "model.api.key_env=OTHER", "model.api.in_flight=2",
                             "model.api.price_prompt=1")) == h
    assert run_hash(make_cfg(*base, "model.api.model=gpt-4o-2024-08-06")) != h
    assert run_hash(make_cfg(*base, "model.api.provider=azure")) != h
    # a model without model.api hashes as before the block existed
    assert run_hash(make_cfg("model=pixtral_tiny", "engine=cpu")) == "84892ccf5a8fd8fa"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_key_stops_the_run_with_one_sentence(standins, tmp_path: Path, status):
    url, _ = standins({"key": KEY, "answers": {"*": [{"status": status, "body": None}]}})
    prompts, store = text_set(tmp_path / "p", 4), tmp_path / "store"
    r = runner(*api_args(url, store, prompts, "model.api.in_flight=1"), env={ENV: "sk-wrong"})
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "Traceback" not in out and out.count("error:") == 1, out
    assert f"answered HTTP {status}" in " ".join(out.split())
    assert f"check the key in {ENV}" in " ".join(out.split())
    assert "sk-wrong" not in out and b"sk-wrong" not in store_bytes(store)


def test_an_unset_key_variable_is_one_sentence(standins, tmp_path: Path):
    url, _ = standins({"key": KEY})
    prompts, store = text_set(tmp_path / "p", 2), tmp_path / "store"
    r = runner(*api_args(url, store, prompts), env={ENV: ""})
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "Traceback" not in out, out
    assert f"model.api.key_env names {ENV}, which is not set" in out


def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(standins, tmp_path: Path):
    elsewhere_log = tmp_path / "elsewhere.jsonl"
    other, _ = standins({"log": str(elsewhere_log)})
    url, _ = standins({"key": KEY, "redirect": other})
    prompts, store = text_set(tmp_path / "p", 2), tmp_path / "store"
    r = runner(*api_args(url, store, prompts), env={ENV: KEY})
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2, out
    assert "a redirect is not followed" in out
    assert not elsewhere_log.exists()  # nothing reached the other origin


def test_a_killed_api_run_resumes_asking_only_what_is_missing(standins, tmp_path: Path):
    gate = tmp_path / "gate"
    log1, log2 = tmp_path / "served1.jsonl", tmp_path / "served2.jsonl"
    url, _ = standins({"key": KEY, "served": str(log1), "gate_after": 3, "gate": str(gate)})
    prompts, store = text_set(tmp_path / "p", 8), tmp_path / "store"
    p = spawn(*api_args(url, store, prompts, "model.api.in_flight=1",
                        "store.fsync_every=1"), env={ENV: KEY})
    try:
        wait_for(p, lambda: len(records(store)) >= 3, "3 stored items")
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
    first = {x["id"] for x in records(store)}
    assert len(first) == 3, output(p)
    url2, _ = standins({"key": KEY, "served": str(log2)})  # the API again
    r = runner(*api_args(url2, store, prompts), env={ENV: KEY})
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(x["id"] for x in records(store)) == [f"t{i:02d}" for i in range(8)]
    again = served(log2)  # only the 5 missing items were asked
    assert len(again) == 5 and not any(f"Item {int(i[1:])}:" in t for t in again
                                       for i in first)
    assert KEY.encode() not in store_bytes(store)


def test_a_card_of_api_runs_is_the_comparison_table_with_published_figures(standins,
                                                                          tmp_path: Path):
    """Two hosted runs of one benchmark, one labelled as a model of the published table: the
    card puts them side by side, the published figure beside the labelled one."""
    url, _ = standins({"key": KEY})
    d = tmp_path / "p" / "mmmu"
    d.mkdir(parents=True)
    items = [{"id": f"q{i}", "text": f"Question {i}?", "expected": "B"} for i in range(6)]
    (d / "set.yaml").write_text(json.dumps({"items": items}))
    store = tmp_path / "store"
    base = ["model=gpt_4o", f"model.api.url={url}", f"model.api.key_env={ENV}",
            f"store.root={store}", f"prompts.root={tmp_path / 'p'}", "prompts.name=mmmu"]
    for name in ("gpt-4o", "qwen2-vl-7b-instruct"):
        r = runner(*base, f"model.name={name}", f"model.api.model={name}", env={ENV: KEY})
        assert r.returncode == 0, r.stdout + r.stderr
    hashes = [p.name for p in run_dirs_of(store)]
    r = runner_results("--root", str(store), "card", *hashes, "--ref", "gpt-4o", "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["table"]
    assert t["models"] and set(t["models"]) == {"gpt-4o", "qwen2-vl-7b-instruct"}
    cells = t["cells"]["mmmu"]
    assert cells["qwen2-vl-7b-instruct"]["published"]["value"] == 47.6
    assert cells["gpt-4o"]["published"] is None  # no readable source for the hosted columns
    assert cells["qwen2-vl-7b-instruct"]["vs_ref"]["n_paired"] == 6
    r = runner_results("--root", str(store), "card", *hashes)
    assert "comparison" in r.stdout and "pub. 47.6" in r.stdout, r.stdout


def test_a_sweep_of_api_runs_starts_no_engine(standins, tmp_path: Path):
    """Hosted points load no engine: the sweep's rows count 0 engine starts, say `served`,
    and its note needs none."""
    url, _ = standins({"key": KEY})
    prompts = text_set(tmp_path / "p", 2, {})
    store = tmp_path / "store"
    r = runner("-m", *api_args(url, store, prompts, "model.name=gpt-4o,gpt-4o-mini"),
               env={ENV: KEY, "COLUMNS": "200"})
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(max(store.glob(".sweeps/*/runs.json")).read_text())
    assert [(x["status"], x["served"], x["engine_starts"]) for x in rows] == [
        ("computed", True, 0)] * 2
    assert "engine starts: 0 (2 groups of equal engine arguments, 2 of them asking a " \
        "server or an API)" in " ".join((r.stdout + r.stderr).split())


def runner_results(*args: str) -> subprocess.CompletedProcess:
    """`python -m runner.results ARGS` in a real process, wide enough not to wrap."""
    return subprocess.run([sys.executable, "-m", "runner.results", *args], cwd=ROOT,
                          text=True, capture_output=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})
