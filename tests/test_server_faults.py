"""The server client (runner/engine/client.py) under faults, against the stand-in server
(tests/standin_server.py): one request's failure is that item's error and the run goes on; a
truncated answer is an item error; a POST the server may have read is never sent twice; a
stall is no progress from the server at all, not a slow answer; the connection pool is
bounded whatever max_num_seqs is."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from test_server import HANG, manifest, one_sentence, records, said, text_set

from conftest import TINY, make_cfg, output, runner, spawn, wait_for
from runner.engine.api import Failed, Finished
from runner.engine.args import engine_spec
from runner.engine.client import ServerEngine
from runner.engine.connect import MAX_CONNECTIONS

pytestmark = pytest.mark.process

DROP, TRUNCATE = "XQZDROPQZX", "XQZTRUNCQZX"


def args_for(url: str, tmp_path: Path, prompts: Path, *more: str) -> list[str]:
    return [*TINY, f"engine.url={url}", "engine.trust_server=true",
            f"store.root={tmp_path / 'store'}", f"prompts.root={prompts}", "prompts.name=texts",
            *more]


def posts(trace: Path) -> list[str]:
    """The client ports of the chat requests the stand-in received, one per request."""
    return [line.split()[1] for line in trace.read_text().splitlines() if line.startswith("post")]


def progress_checks(trace: Path) -> int:
    """How often the client read /metrics: once per engine.stall_timeout_s without an answer."""
    return trace.read_text().count("metrics") if trace.exists() else 0


def held_run(standin, tmp_path: Path, metrics: bool, checks: int) -> str:
    """Two items; the stand-in holds every answer (its gate) until the client has checked the
    server's progress `checks` times (each after 0.5 s without an answer, engine.stall_timeout_s),
    then lets them go. The run's output; it must complete."""
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    url, _ = standin(gate_after=0, gate=str(gate), metrics=metrics, trace=str(trace))
    prompts = text_set(tmp_path / "p", 2)
    p = spawn(*args_for(url, tmp_path, prompts, "engine.max_num_seqs=1",
                        "engine.stall_timeout_s=0.5"))
    try:
        wait_for(p, lambda: progress_checks(trace) >= checks,
                 f"{checks} progress checks while the answer is held", 120)
        gate.touch()
        assert p.wait(120) == 0, output(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert [x["status"] for x in records(tmp_path / "store")] == ["ok", "ok"]
    return output(p)


def test_a_post_the_server_may_have_read_is_never_sent_again(standin, tmp_path: Path):
    trace = tmp_path / "trace"
    url, _ = standin(drop=DROP, trace=str(trace))
    prompts = text_set(tmp_path / "p", 4, {2: DROP})
    # one connection, kept alive: item 2 goes out on a connection that served items 0 and 1
    r = runner(*args_for(url, tmp_path, prompts, "engine.max_num_seqs=1"))
    assert r.returncode == 0, r.stdout + r.stderr
    recs = {x["id"]: x for x in records(tmp_path / "store")}
    assert recs["t02"]["status"] == "error" and recs["t02"]["error_kind"] == "request"
    assert "not resent" in recs["t02"]["error"]
    assert all(recs[k]["status"] == "ok" for k in ("t00", "t01", "t03"))
    ports = posts(trace)
    assert len(ports) == 4  # each item sent exactly once
    assert ports[0] == ports[1] == ports[2], ports  # item 2 on the kept-alive connection


def test_a_truncated_answer_is_an_item_error_not_the_end_of_the_run(standin, tmp_path: Path):
    trace = tmp_path / "trace"
    url, _ = standin(truncate=TRUNCATE, trace=str(trace))
    prompts = text_set(tmp_path / "p", 4, {0: TRUNCATE})  # the first, on a fresh connection
    r = runner(*args_for(url, tmp_path, prompts, "engine.max_num_seqs=1"))
    assert r.returncode == 0, r.stdout + r.stderr
    recs = {x["id"]: x for x in records(tmp_path / "store")}
    assert sorted(recs) == ["t00", "t01", "t02", "t03"]
    assert recs["t00"]["status"] == "error" and recs["t00"]["error_kind"] == "request"
    assert all(recs[k]["status"] == "ok" for k in ("t01", "t02", "t03"))
    assert len(posts(trace)) == 4


def test_a_slow_server_that_progresses_is_not_a_stall(standin, tmp_path: Path):
    """An answer held past three stall timeouts while the server's tokens count up on
    /metrics: each check sees progress, the run goes on and completes once it is let go."""
    out = held_run(standin, tmp_path, metrics=True, checks=3)
    assert "/metrics has no" not in out, out


def test_a_server_without_token_counters_is_said_once_and_judged_by_health(standin,
                                                                           tmp_path: Path):
    """No token counters on /metrics: stall detection falls back to /health (the run goes on
    while it answers), and the run's output says so, once."""
    out = held_run(standin, tmp_path, metrics=False, checks=3)
    assert " ".join(out.split()).count("/metrics has no vllm:prompt_tokens_total") == 1, out


def test_a_server_with_no_progress_at_all_is_a_stall(standin, tmp_path: Path):
    url, _ = standin(hang=HANG, metrics=True)
    prompts = text_set(tmp_path / "p", 2, {1: HANG})
    r = runner(*args_for(url, tmp_path, prompts, "engine.max_num_seqs=1",
                         "engine.stall_timeout_s=1", "engine.request_timeout_s=null"))
    assert r.returncode == 3, r.stdout + r.stderr
    one_sentence(r.stdout + r.stderr)
    assert "no progress for 1 s, engine.stall_timeout_s" in said(r)
    assert [x["id"] for x in records(tmp_path / "store")] == ["t00"]


def test_the_connection_pool_is_bounded_whatever_max_num_seqs_is(standin, tmp_path: Path):
    trace = tmp_path / "trace"
    url, _ = standin(trace=str(trace), slow=0.2)
    prompts = text_set(tmp_path / "p", 12)
    r = runner(*args_for(url, tmp_path, prompts, "engine.max_num_seqs=256",
                         "engine.max_connections=3"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(records(tmp_path / "store")) == 12
    assert len(posts(trace)) == 12 and 1 <= len(set(posts(trace))) <= 3
    assert manifest(tmp_path / "store")["server"]["connections"] == 3
    # the default bound, in this process: 1,024 sequences, 64 connections
    kw, _ = engine_spec(make_cfg(*TINY, f"engine.url={url}", "engine.trust_server=true",
                                 f"store.root={tmp_path / 's2'}", "engine.max_num_seqs=1024"),
                        prompts)
    eng = ServerEngine(kw)
    try:
        assert eng.pool == MAX_CONNECTIONS == 64 and len(eng._threads) == 64
    finally:
        eng.shutdown()


def test_any_exception_for_one_request_is_that_items_error(standin, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    """A failure that is no OSError (Pillow's DecompressionBombError, a bug) while building one
    request: that item's error; the worker lives on and serves the next ones."""
    import runner.engine.client as client

    def inline(messages: list[dict]) -> list[dict]:
        if "bomb" in str(messages):
            raise Image.DecompressionBombError("too many pixels")
        if "bug" in str(messages):
            raise KeyError("a bug")
        return messages

    monkeypatch.setattr(client, "inline_images", inline)
    url, _ = standin()
    kw, _ = engine_spec(make_cfg(*TINY, f"engine.url={url}", "engine.trust_server=true",
                                 f"store.root={tmp_path / 's'}", "engine.max_num_seqs=1"),
                        tmp_path)
    eng = ServerEngine(kw)
    try:
        for key in ("a", "bomb", "bug", "b"):
            eng.submit(key, [{"role": "user", "content": f"say {key}"}], {"max_tokens": 4})
        evs = {e.key: e for e in eng.events(stall_timeout_s=30)}
    finally:
        eng.shutdown()
    assert isinstance(evs["a"], Finished) and isinstance(evs["b"], Finished)
    assert isinstance(evs["bomb"], Failed) and "DecompressionBombError" in evs["bomb"].reason
    assert isinstance(evs["bug"], Failed) and evs["bug"].kind == "image"
