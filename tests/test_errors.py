"""Errors at scale (docs/errors.md): every error record's kind, the error budget at plan time
and at run time, retrying error records (a kill -9 in the middle of a retry included), and the
OpenAI-style error file. Real processes on the fake engine; the kinds that are about vLLM
(refused sampling, and the plan's image/too_many_images/too_long on the real engine's runs)
are checked in test_real_engine.py and test_faults.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fakes
from conftest import (
    ROOT,
    TINY,
    fake_env,
    output,
    run_dirs_of,
    runner,
    spawn,
    wait_for,
)
from runner import kinds
from runner.errors import UserError
from runner.files import atomic_write
from runner.store.record import read_records
from runner.store.rundir import RunDir

pytestmark = pytest.mark.process  # the runner's processes on the fake engine: full lane

POISON, HANG = "XQZPOISONQZX", "XQZHANGQZX"
IMAGE = sorted((ROOT / "prompts/sample/images").iterdir())[0]


def write_set(root: Path, items: list[dict], name: str = "errs") -> Path:
    d = root / name
    (d / "images").mkdir(parents=True)
    shutil.copy(IMAGE, d / "images/ok.png")
    (d / "images/zero.png").write_bytes(b"")
    (d / "set.yaml").write_text(json.dumps({"items": items}))
    return root


def args(prompts: Path, store: Path, *more: str, name: str = "errs") -> list[str]:
    return [*TINY, f"prompts.name={name}", f"prompts.root={prompts}", f"store.root={store}",
            "sampling.max_tokens=8", *more]


def results(store: Path, *argv: str, code: int = 0) -> subprocess.CompletedProcess:
    """`python -m runner.results --root STORE ARGV`, its exit code checked."""
    p = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(store), *argv],
                       cwd=ROOT, text=True, capture_output=True, timeout=300,
                       env={**os.environ, "COLUMNS": "300"})
    assert p.returncode == code, p.stderr
    return p


def lines(run: Path, name: str = "results.jsonl") -> list[str]:
    f = run / name
    return f.read_text().splitlines() if f.exists() else []


def by_id(run: Path) -> dict[str, dict]:
    recs = [json.loads(x) for x in lines(run)]
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids)), f"an id is stored twice: {sorted(ids)}"
    return {r["id"]: r for r in recs}


# --- the kinds ------------------------------------------------------------------------------

def test_the_runners_own_sentences_classify_as_their_kind():
    """What a record stored before error kinds gets from its reason (kind_of), and what a
    vLLM refusal gets from its message (classify)."""
    said = {
        "image 'a.png' is an empty file (0 bytes)": "image",
        "image 'b.png' is over prompts.max_image_pixels=89,478,485 pixels": "image",
        "3 images in one prompt; model.limit_mm_per_prompt allows 2": "too_many_images",
        "prompt has 5009 tokens, over model.max_model_len=4096 (at least one output token "
        "must fit)": "too_long",
        "the tokenizer rejects this request (ValueError: bad)": "request",
        "sampling: ValueError: top_p must be in (0, 1], got 5.0.": "sampling",
        "the engine died while generating this item: the engine core process "
        "(EngineCore_DP0, pid 7) exited with code 66": "engine_death",
        "the engine died while generating this item: no progress for 2 s "
        "(engine.stall_timeout_s=1)": "stall",
        "ValueError: The decoder prompt (length 9000) is longer than the maximum model length "
        "of 4096.": "too_long",
        "something else entirely": "other",
    }
    for reason, kind in said.items():
        assert kinds.kind_of({"status": "error", "error": reason}) == kind, reason
    assert kinds.kind_of({"status": "error", "error": "x", "error_kind": "stall"}) == "stall"
    assert kinds.kind_of({"status": "ok", "output": "image"}) is None
    assert kinds.classify("EngineCoreError: odd", "request") == "request"


def test_the_watchdogs_stall_reason_is_kind_stall():
    """The sentence the real engine's watchdog gives a stall (the fake's is tested below)."""
    from types import SimpleNamespace

    from runner.engine.watchdog import Watchdog

    proc = SimpleNamespace(exitcode=None, name="EngineCore_DP0", pid=1, kill=lambda: None)
    core = SimpleNamespace(resources=SimpleNamespace(
        engine_manager=SimpleNamespace(processes=[proc]), engine_dead=False),
        outputs_queue=SimpleNamespace(put_nowait=lambda e: None))
    dog = Watchdog(core)
    dog.stop()
    dog.stall_timeout_s, dog.last = 1.0, time.monotonic() - 5
    reason = dog.check()
    assert reason is not None and reason.startswith("no progress for ")
    assert kinds.death_kind(reason) == "stall"
    assert kinds.death_kind("the engine core process (x, pid 1) exited with code 66") == \
        "engine_death"


def test_kinds_to_retry_are_checked_naming_the_key():
    assert kinds.parse_kinds(True, "retry_errors") == frozenset(kinds.KINDS)
    assert kinds.parse_kinds(False, "retry_errors") == frozenset()
    assert kinds.parse_kinds(["stall", "engine_death"], "k") == {"stall", "engine_death"}
    assert kinds.parse_kinds("image", "k") == {"image"}
    with pytest.raises(UserError, match=r"^retry_errors: unknown error kind 'stalls'; use true"):
        kinds.parse_kinds(["stalls"], "retry_errors")


def test_every_kind_from_one_run_is_stored_and_counted_everywhere(tmp_path: Path):
    """A broken image, three images over a limit of two, an overlong prompt, sampling the
    engine refuses, a poison item and an item that stalls the engine: each stored once with
    its kind; the end summary, the manifest, metrics.json, `results show` and the HTML report
    count them by kind."""
    items = [{"id": f"ok{i}", "text": f"Item {i}: describe it.", "images": ["images/ok.png"]}
             for i in range(4)]
    items += [{"id": "img", "text": "Describe it.", "images": ["images/zero.png"]},
              {"id": "many", "text": "Compare.", "images": ["images/ok.png"] * 3},
              {"id": "long", "text": "word " * 5000},
              {"id": "samp", "text": "Count.", "sampling": {"n": -1}},
              {"id": "poison", "text": f"Tell {POISON} me."},
              {"id": "hang", "text": f"Tell {HANG} me."}]
    prompts, store = write_set(tmp_path / "p", items), tmp_path / "s"
    p = runner(*args(prompts, store, "model.limit_mm_per_prompt.image=2",
                     "engine.max_num_seqs=2", "engine.stall_timeout_s=1",
                     "engine.max_restarts=8"),
               env=fake_env(poison=POISON, hang=HANG) | {"COLUMNS": "200"})  # a row unwrapped
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = run_dirs_of(store)
    got = {i: r.get("error_kind") for i, r in by_id(run).items()}
    want = {"img": "image", "many": "too_many_images", "long": "too_long", "samp": "sampling",
            "poison": "engine_death", "hang": "stall"}
    assert got == {**{f"ok{i}": None for i in range(4)}, **want}
    order = {"image": 1, "too_many_images": 1, "too_long": 1, "sampling": 1,
             "engine_death": 1, "stall": 1}
    text = "image 1 · too_many_images 1 · too_long 1 · sampling 1 · engine_death 1 · stall 1"
    assert f"6 errors ({text})" in " ".join(p.stderr.split())  # the end summary
    m = json.loads((run / "manifest.json").read_text())
    assert m["counts"]["errors"] == 6 and m["counts"]["errors_by_kind"] == order
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["errors_by_kind"] == order
    show = results(store, "show", run.name).stdout
    assert f"10 stored (6 errors: {text})" in " ".join(show.split())
    from runner.results.report.html import build_report

    page = build_report([run], tmp_path / "r.html").read_text()
    assert f'"errors":"6 ({text})"' in page


# --- the error budget -------------------------------------------------------------------

def test_plan_time_errors_over_the_budget_stop_the_run_before_any_item_runs(tmp_path: Path):
    items = [{"id": f"bad{i}", "text": "Describe.", "images": ["images/zero.png"]}
             for i in range(3)]
    items += [{"id": f"ok{i}", "text": f"Item {i}."} for i in range(6)]
    items.append({"id": "long", "text": "word " * 5000})
    prompts, store = write_set(tmp_path / "p", items), tmp_path / "s"
    trace = tmp_path / "trace"
    p = runner(*args(prompts, store, "prompts.max_error_rate=0.3"),
               env=fake_env(trace=str(trace)))
    assert p.returncode == 3, p.stderr[-3000:]
    err = " ".join(p.stderr.split())
    assert ("error: prompts.max_error_rate=0.3 is exceeded at plan time: 4 of 10 items planned "
            "are errors (40.0%: image 3 · too_long 1; e.g. ids bad0, bad1, bad2); no item was "
            "sent to the engine: fix those items or raise prompts.max_error_rate.") in err
    assert "Traceback" not in err
    # the engine may have started beside the plan: it received nothing, and no run was written
    got = trace.read_text().splitlines() if trace.exists() else []
    assert not [ln for ln in got if ln.startswith("in ")]
    assert not (store.exists() and run_dirs_of(store))
    p = runner(*args(prompts, store, "prompts.max_error_rate=0.4"), env=fake_env())
    assert p.returncode == 0, p.stderr[-3000:]  # 40 % is within a 40 % budget
    p = runner(*args(prompts, store, "prompts.max_error_rate=2"), env=fake_env())
    assert p.returncode == 2 and "prompts.max_error_rate must be a fraction" in p.stderr


def test_run_time_errors_over_the_budget_fail_the_run_and_keep_what_is_stored(tmp_path: Path):
    """Every third of 120 items carries sampling the engine refuses: once 50 items are done
    the rate is about a third, over a 10 % budget. The run fails with exit 3 at exactly the
    50th, its records stay, and a rerun without the budget completes the rest."""
    n = 120
    items = [{"id": f"i{i:03d}", "text": f"Item {i}."} | ({"sampling": {"n": -1}} if i % 3 == 0
                                                          else {}) for i in range(n)]
    prompts, store = write_set(tmp_path / "p", items), tmp_path / "s"
    p = runner(*args(prompts, store, "prompts.max_error_rate=0.1"),
               env=fake_env() | {"COLUMNS": "400"})
    assert p.returncode == 3, p.stderr[-3000:]
    (run,) = run_dirs_of(store)
    first = lines(run)
    errors = sum(r["status"] == "error" for r in by_id(run).values())
    assert len(first) == 50 and 50 * 0.1 < errors < 50  # stopped at the first check
    err = " ".join(p.stderr.split())
    assert (f"error: prompts.max_error_rate=0.1 is exceeded: {errors} of 50 items the engine "
            f"finished are errors ({errors / 50:.1%}: sampling {errors}; e.g. ids i000, i003, "
            f"i006); the run stopped and what finished is stored in {run}: fix the cause, then "
            "rerun with retry_errors=true to retry them.") in err
    assert "Traceback" not in err
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "failed" and "max_error_rate" in m["error"]
    assert m["counts"]["stored"] == 50 and m["counts"]["errors_by_kind"] == {"sampling": errors}
    p = runner(*args(prompts, store), env=fake_env())
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(by_id(run)) == n and lines(run)[:50] == first


# --- retrying errors ----------------------------------------------------------------------

def test_a_kill_during_a_retry_loses_nothing_and_stores_no_id_twice(tmp_path: Path):
    """Two poison items are stored as engine_death errors. A retry (the poison gone) is
    killed with SIGKILL, process group and engine, while the engine holds after the first
    retried item: the old error lines are in errors.history.jsonl, results.jsonl holds each
    id once. The same retry command then finishes: every item once and ok, the history kept
    and not duplicated, metrics and the index see the new outcome."""
    n = 12
    items = [{"id": f"f{i:02d}", "text": f"Item {i}: {POISON if i in (3, 8) else ''} tell."}
             for i in range(n)]
    prompts, store = write_set(tmp_path / "p", items), tmp_path / "s"
    base = args(prompts, store, "engine.max_num_seqs=2", "engine.max_restarts=6")
    p = runner(*base, env=fake_env(poison=POISON))
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = run_dirs_of(store)
    before = lines(run)
    errs = [ln for ln in before if json.loads(ln)["status"] == "error"]
    assert [json.loads(ln)["id"] for ln in errs] == ["f03", "f08"]
    assert all(json.loads(ln)["error_kind"] == "engine_death" for ln in errs)

    gate = tmp_path / "gate"
    retry = [*base, "retry_errors=[engine_death,stall]"]
    q = spawn(*retry, env=fake_env(gate_after=1, gate=str(gate)))
    wait_for(q, lambda: len(lines(run)) == n - 1, "the first retried item stored")
    os.killpg(q.pid, signal.SIGKILL)  # the runner and its engine, mid-retry
    q.wait()
    assert "retrying 2 error records (engine_death 2)" in " ".join(output(q).split())
    assert lines(run, "errors.history.jsonl") == errs  # the replaced lines, byte for byte
    mid = by_id(run)  # each id once
    assert len(mid) == n - 1 and sum(r["status"] == "error" for r in mid.values()) == 0
    ok_before = [ln for ln in before if ln not in errs]
    assert lines(run)[:n - 2] == ok_before  # the rewrite kept every other line as it was

    p = runner(*retry, env=fake_env())  # the same retry, run to the end
    assert p.returncode == 0, p.stderr[-3000:]
    final = by_id(run)
    assert sorted(final) == [f"f{i:02d}" for i in range(n)]
    assert all(r["status"] == "ok" for r in final.values())
    assert lines(run, "errors.history.jsonl") == errs
    assert lines(run)[:n - 2] == ok_before
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "complete" and m["counts"]["errors"] == 0
    assert json.loads((run / "metrics.json").read_text())["errors"] == 0
    (row,) = [json.loads(x) for x in results(store, "ls", "--json").stdout.splitlines()]
    assert row["items_stored"] == n and row["items_errored"] == 0


def test_retry_errors_only_the_kinds_asked_for(tmp_path: Path):
    items = [{"id": "samp", "text": "Count.", "sampling": {"n": -1}},
             {"id": "img", "text": "Describe.", "images": ["images/zero.png"]},
             {"id": "ok", "text": "Hello."}]
    prompts, store = write_set(tmp_path / "p", items), tmp_path / "s"
    assert runner(*args(prompts, store), env=fake_env()).returncode == 0
    (run,) = run_dirs_of(store)
    first = by_id(run)
    p = runner(*args(prompts, store, "retry_errors=[sampling]"), env=fake_env())
    assert p.returncode == 0, p.stderr[-3000:]
    again = by_id(run)
    assert again["img"] == first["img"] and again["ok"] == first["ok"]  # not retried
    assert again["samp"]["time"] >= first["samp"]["time"]  # retried: refused again
    assert [json.loads(x)["id"] for x in lines(run, "errors.history.jsonl")] == ["samp"]
    assert "1 computed" not in p.stderr and "2 cached" in p.stderr
    p = runner(*args(prompts, store, "retry_errors=[stalls]"), env=fake_env())
    assert p.returncode == 2 and "retry_errors: unknown error kind 'stalls'" in p.stderr


def test_a_retry_killed_between_its_two_writes_is_completed_by_the_next(tmp_path: Path,
                                                                        monkeypatch):
    """The kill window between the history append and the results rewrite: the record is
    in both files; the next retry does not write its history line twice."""
    from runner.job import retry

    err = fakes.record("b", error="the engine died while generating this item: x",
                       error_kind="engine_death")
    run = fakes.write_run(tmp_path, "r" * 16, [fakes.record("a", "A"), err])
    rd = RunDir(tmp_path, "r" * 16)

    def killed(*a, **k):
        raise KeyboardInterrupt  # stands for the kill: the rewrite never happens

    monkeypatch.setattr(retry, "atomic_write", killed)
    with pytest.raises(KeyboardInterrupt):
        retry.retire(rd, {err["key"]: err})
    assert len(lines(run)) == 2 and len(lines(run, retry.HISTORY)) == 1
    monkeypatch.setattr(retry, "atomic_write", atomic_write)
    retry.retire(rd, {err["key"]: err})
    assert [json.loads(x)["id"] for x in lines(run)] == ["a"]
    assert [json.loads(x) for x in lines(run, retry.HISTORY)] == [err]


def test_a_shard_retries_only_the_records_in_its_own_file(tmp_path: Path):
    from runner.job import retry

    a = fakes.record("a", error="sampling: ValueError: x", error_kind="sampling")
    b = fakes.record("b", error="sampling: ValueError: y", error_kind="sampling")
    fakes.write_run(tmp_path, "s" * 16, [a])  # results.jsonl, an earlier unsharded run
    shard = RunDir(tmp_path, "s" * 16, (0, 2))
    shard.writer(16, 2.0).write(b)
    stored = read_records(shard.path)
    assert retry.retryable(shard, stored, {"sampling"}) == {b["key"]}
    assert retry.retryable(RunDir(tmp_path, "s" * 16), stored, {"sampling"}) == {a["key"],
                                                                                 b["key"]}
    assert retry.retryable(shard, stored, {"stall"}) == set()


# --- the OpenAI error file -------------------------------------------------------------------

def test_export_openai_with_an_error_file(tmp_path: Path):
    recs = [fakes.record("a", "A"),
            fakes.record("b", error="prompt has 5009 tokens, over model.max_model_len=4096",
                         error_kind="too_long"),
            fakes.record("c", error="the engine died while generating this item: x",
                         error_kind="engine_death"),
            fakes.record("d", error="3 images in one prompt")]  # before kinds: classified
    fakes.write_run(tmp_path, "e" * 16, recs)
    out, bad = tmp_path / "output.jsonl", tmp_path / "errors.jsonl"
    p = results(tmp_path, "export", "eee", "--format", "openai", "--out", str(out),
                "--errors", str(bad))
    assert "Wrote 3 error lines" in p.stderr and "Wrote 1 items" in p.stderr
    (a,) = map(json.loads, out.read_text().splitlines())
    assert a["custom_id"] == "a" and a["response"]["status_code"] == 200 and a["error"] is None
    b, c, d = map(json.loads, bad.read_text().splitlines())
    assert b == {"id": b["id"], "custom_id": "b", "error": None, "response": {
        "status_code": 400, "request_id": b["response"]["request_id"], "body": {"error": {
            "message": "prompt has 5009 tokens, over model.max_model_len=4096",
            "type": "invalid_request_error", "param": "messages", "code": "too_long"}}}}
    assert b["id"].startswith("batch_req_") and b["response"]["request_id"].startswith("req_")
    assert c["response"]["status_code"] == 500
    assert c["response"]["body"]["error"]["type"] == "server_error"
    assert c["response"]["body"]["error"]["code"] == "engine_death"
    assert d["response"]["body"]["error"]["code"] == "too_many_images"
    whole = results(tmp_path, "export", "eee", "--format", "openai").stdout.splitlines()
    assert len(whole) == 4 and json.loads(whole[1])["response"] is None  # without --errors
    p = results(tmp_path, "export", "eee", "--errors", str(bad), code=2)
    assert "--errors writes the OpenAI Batch API's error file" in p.stderr
