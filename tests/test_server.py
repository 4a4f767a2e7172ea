"""Runs against a vLLM server (engine.url, engine=server), on a stand-in server process
(tests/standin_server.py): the checks before anything is sent, the state file of
`python -m runner.serve`, a request timeout, a refused request, a server that dies mid-run
and the rerun that resumes. The real vLLM server is in test_real_engine.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY, make_cfg, output, run_dirs_of, runner, spawn, wait_for
from runner.engine.args import engine_kwargs
from runner.engine.server_state import write_state

pytestmark = pytest.mark.process  # the runner's processes on the fake engine: full lane

MODEL = str((ROOT / "data" / "pixtral-tiny").resolve())
HANG, REFUSE = "XQZHANGQZX", "XQZREFUSEQZX"


def text_set(root: Path, n: int, marks: dict[int, str] | None = None) -> Path:
    d = root / "texts"
    d.mkdir(parents=True)
    items = [{"id": f"t{i:02d}", "text": f"Item {i}: say something."} for i in range(n)]
    for i, m in (marks or {}).items():
        items[i]["text"] += f" {m}"
    (d / "set.yaml").write_text(json.dumps({"items": items}))
    return root


def records(store: Path) -> list[dict]:
    return [json.loads(x) for f in store.glob("*/results*.jsonl")
            for x in f.read_text().splitlines()]


def manifest(store: Path) -> dict:
    (d,) = run_dirs_of(store)
    return json.loads((d / "manifest.json").read_text())


def said(r: subprocess.CompletedProcess) -> str:
    """The console's text, unwrapped."""
    return " ".join((r.stdout + r.stderr).split())


def one_sentence(out: str) -> None:
    assert "Traceback" not in out, out
    assert out.count("error:") == 1, out


def test_a_trusted_server_runs_the_sample_set(standin, tmp_path: Path):
    url, _ = standin()
    store = tmp_path / "store"
    r = runner(*TINY, f"engine.url={url}", "engine.trust_server=true", f"store.root={store}")
    assert r.returncode == 0, r.stdout + r.stderr
    recs = {x["id"]: x for x in records(store)}
    assert len(recs) == 5 and all(x["status"] == "ok" for x in recs.values())
    # the images reached the server (inlined as data: URLs)
    assert recs["compare_shapes"]["output"].endswith("images=2")
    assert recs["text_only"]["output"].endswith("images=0")
    assert recs["bar_chart"]["completion_tokens"] == 3
    m = manifest(store)
    assert m["status"] == "complete"
    assert m["server"]["trust_server"] is True and m["server"]["url"] == url
    assert m["server"]["started_by"] == "unknown"
    # the same config without a server is a cache hit: the url is not in the hash
    again = runner(*TINY, f"store.root={store}")
    assert again.returncode == 0 and "cached" in said(again), again.stderr


def test_an_unchecked_server_needs_trust_server(standin, tmp_path: Path):
    url, _ = standin()
    store = tmp_path / "store"
    r = runner(*TINY, f"engine.url={url}", f"store.root={store}")
    assert r.returncode == 2, r.stdout + r.stderr
    one_sentence(r.stdout + r.stderr)
    assert "engine.trust_server=true" in said(r)
    assert not store.exists() or not run_dirs_of(store)


def test_an_unreachable_url_is_one_sentence(tmp_path: Path, tiny_weights: Path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = runner(*TINY, f"engine.url=http://127.0.0.1:{port}", "engine.trust_server=true",
               f"store.root={tmp_path}")
    assert r.returncode == 2, r.stdout + r.stderr
    one_sentence(r.stdout + r.stderr)
    assert f"No vLLM server answers at engine.url=http://127.0.0.1:{port}" in said(r)


def test_engine_server_without_a_server_is_one_sentence(tmp_path: Path, tiny_weights: Path):
    r = runner("model=pixtral_tiny", "engine=server", f"store.root={tmp_path}")
    assert r.returncode == 2, r.stdout + r.stderr
    one_sentence(r.stdout + r.stderr)
    assert "python -m runner.serve" in said(r)


def state_for(store: Path, url: str, pid: int, *overrides: str) -> None:
    """The state file runner.serve would write for a server started with these overrides."""
    kw = engine_kwargs(make_cfg(*TINY, *overrides), ROOT / "prompts")
    write_state(store, {"url": url, "pid": pid, "runner_pid": pid, "model": kw["model"],
                        "engine_args": kw, "added": {"max_num_seqs": 4}})


def test_the_state_file_finds_the_server_and_its_args_are_checked(standin, tmp_path: Path):
    url, pid = standin()
    store = tmp_path / "store"
    state_for(store, url, pid, "engine.dtype=bfloat16")
    r = runner("model=pixtral_tiny", "engine=server", f"store.root={store}")
    assert r.returncode == 2, r.stdout + r.stderr
    one_sentence(r.stdout + r.stderr)
    assert 'dtype="bfloat16" (this config: "auto")' in said(r)
    assert not run_dirs_of(store)

    state_for(store, url, pid, "engine.max_num_seqs=2")  # not an output-changing argument
    r = runner("model=pixtral_tiny", "engine=server", f"store.root={store}")
    assert r.returncode == 0, r.stdout + r.stderr
    m = manifest(store)
    assert m["server"]["started_by"] == "runner.serve" and m["server"]["pid"] == pid
    assert m["server"]["trust_server"] is False and m["server"]["in_flight"] == 2

    # /v1/models says max_model_len 4096: another value in the config is refused
    r = runner("model=pixtral_tiny", "engine=server", "model.max_model_len=2048",
               f"store.root={store}")
    assert r.returncode == 2 and "max_model_len" in said(r), r.stdout + r.stderr
    one_sentence(r.stdout + r.stderr)


def test_a_stale_state_file_is_one_sentence(standin, tmp_path: Path):
    url, pid = standin()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state_for(tmp_path, url, dead.pid)
    r = runner("model=pixtral_tiny", "engine=server", f"store.root={tmp_path}")
    assert r.returncode == 2 and "not running any more" in said(r), r.stdout + r.stderr
    one_sentence(r.stdout + r.stderr)


def test_a_timeout_and_a_refusal_are_item_errors(standin, tmp_path: Path):
    url, _ = standin(hang=HANG, refuse=REFUSE)
    prompts, store = text_set(tmp_path / "p", 6, {1: HANG, 4: REFUSE}), tmp_path / "store"
    r = runner(*TINY, f"engine.url={url}", "engine.trust_server=true", f"store.root={store}",
               f"prompts.root={prompts}", "prompts.name=texts", "engine.request_timeout_s=1")
    assert r.returncode == 0, r.stdout + r.stderr
    recs = {x["id"]: x for x in records(store)}
    assert sorted(recs) == [f"t{i:02d}" for i in range(6)]
    assert recs["t01"]["status"] == "error" and "engine.request_timeout_s=1" in recs["t01"]["error"]
    assert recs["t04"]["status"] == "error" and "refused" in recs["t04"]["error"]
    assert recs["t04"]["error"].startswith("the server refused the request (HTTP 400)")
    assert (recs["t01"]["error_kind"], recs["t04"]["error_kind"]) == ("timeout", "request")
    assert all(recs[k]["status"] == "ok" for k in ("t00", "t02", "t03", "t05"))


def test_a_server_that_dies_stops_the_run_and_a_rerun_resumes(standin, tmp_path: Path):
    url, _ = standin(die_after=3)
    prompts, store = text_set(tmp_path / "p", 8), tmp_path / "store"
    args = [*TINY, "engine.trust_server=true", f"store.root={store}", f"prompts.root={prompts}",
            "prompts.name=texts", "engine.max_num_seqs=1"]
    r = runner(*args, f"engine.url={url}")
    assert r.returncode == 3, r.stdout + r.stderr
    one_sentence(r.stdout + r.stderr)
    assert f"The vLLM server at {url} stopped answering" in said(r)
    assert "rerun the same command to resume" in said(r)
    assert len(records(store)) == 3
    assert manifest(store)["status"] == "failed"

    url2, _ = standin()  # "started again" (on another port)
    r = runner(*args, f"engine.url={url2}")
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [x["id"] for x in records(store)]
    assert sorted(ids) == [f"t{i:02d}" for i in range(8)]  # each exactly once
    m = manifest(store)
    assert m["status"] == "complete" and m["computed"] == 5


def test_several_samples_per_item_through_a_server(standin, tmp_path: Path):
    url, _ = standin()
    prompts, store = text_set(tmp_path / "p", 3), tmp_path / "store"
    r = runner(*TINY, f"engine.url={url}", "engine.trust_server=true", f"store.root={store}",
               f"prompts.root={prompts}", "prompts.name=texts", "sampling.n=2")
    assert r.returncode == 0, r.stdout + r.stderr
    for x in records(store):
        assert len(x["outputs"]) == 2 and x["completion_tokens"] == 6  # 3 token ids each
        assert x["outputs"][0]["text"] != x["outputs"][1]["text"]


def test_ctrl_c_during_a_server_run_keeps_what_finished(standin, tmp_path: Path):
    url, _ = standin(hang=HANG)
    prompts, store = text_set(tmp_path / "p", 8, {3: HANG}), tmp_path / "store"
    args = [*TINY, "engine.trust_server=true", f"store.root={store}", f"prompts.root={prompts}",
            "prompts.name=texts", "engine.max_num_seqs=1"]
    p = spawn(*args, f"engine.url={url}")
    wait_for(p, lambda: len(records(store)) == 3, "3 stored items")  # item 3 never answers
    os.killpg(p.pid, signal.SIGINT)
    assert p.wait(120) == 130, output(p)
    assert len(records(store)) == 3 and manifest(store)["status"] == "interrupted"
    url2, _ = standin()
    r = runner(*args, f"engine.url={url2}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(x["id"] for x in records(store)) == [f"t{i:02d}" for i in range(8)]
