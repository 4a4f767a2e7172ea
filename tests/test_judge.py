"""The LLM judge (`python -m runner.results judge`, runner/results/judging/judge.py) against
a stand-in judge server (tests/standin_server.py): the prompt as mistral-evals builds it, ratings
stored and never asked twice, an unparsable judge, a refusal, a timeout, an unreachable judge,
the error budget, and a kill -9 mid-scoring then the resume; the client against a faulty gateway
(a redirect to another host, JSON that is not an object, Retry-After, a 4xx, an error body that
echoes the key). Generations come from the fake engine; the real judge (runner.serve of the tiny
Pixtral) is in test_real_engine.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import CONF, FAKE, ROOT, TINY, run_dirs_of, runner, wait_for
from runner.errors import UserError
from runner.results.cli.evaluate import judge_config
from runner.results.judging.judge import Endpoint, JudgeFailed, judge_prompt, parse_rating, turns_of
from runner.results.judging.judged import aggregate

UNRATED, REFUSE, HANG = "XQZUNRATEDQZX", "XQZREFUSEQZX", "XQZHANGQZX"


def mm_mt_bench() -> object:
    return OmegaConf.load(CONF / "judge" / "mm_mt_bench.yaml")


# --- the prompt, written down by hand from mistral-evals' code and docs/judges.md -------------

IMG = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_the_mm_mt_bench_prompt_of_a_two_turn_item_is_mistral_evals_as_documented():
    """MultimodalLLMJudge._get_judge_prompt (mistralai/mistral-evals, eval/tasks/mm_mt_bench.py)
    as docs/judges.md says the runner builds it, its deviation included (the code as written
    drops the image and replays whole message dicts; the runner sends the turns' content, the
    image in its place), for the second turn of a conversation whose first user message is
    [image, text]: the text starts with the Start marker and `### User:\\n`, the image is its
    own part, the rest of the replay is one text part (_add_or_append_chunk merges texts), and
    the assistant's answer follows the last reference after `\\n\\n` more (its own f-string
    starts with them)."""
    messages = [{"role": "user", "content": [IMG, {"type": "text", "text": "What is shown?"}]},
                {"role": "assistant", "content": "A bar chart."},
                {"role": "user", "content": "Which bar is tallest?"}]
    got = judge_prompt(mm_mt_bench(), messages, "Q3.", "The third one.")
    assert got == [
        {"type": "text", "text": "<|The Start of Conversation with User|>\n\n### User:\n"},
        IMG,
        {"type": "text", "text": "What is shown?\n\n### Reference answer:\nA bar chart.\n\n"
                                 "### User:\nWhich bar is tallest?\n\n### Reference answer:\nQ3."
                                 "\n\n\n\n### Assistant's answer:\nThe third one.\n\n"
                                 "<|The End of Conversation with User|>\n\n\n"}]
    j = mm_mt_bench()
    assert j.system.startswith("Please act as an impartial judge") and j.system.endswith(
        'for example: "Rating: [[5]]".\n\n')
    assert turns_of(messages, "Q3.") == [(messages[0]["content"], "A bar chart."),
                                         ("Which bar is tallest?", "Q3.")]


def test_the_rating_parse_is_the_first_double_bracket_inside_the_scale():
    j = mm_mt_bench()
    assert parse_rating(j, "fine. Rating: [[7]] then [[2]]") == 7.0
    assert parse_rating(j, "Rating: [[8.5]]") == 8.5
    assert parse_rating(j, "Rating: 7") is None and parse_rating(j, "[[11]]") is None


def test_the_aggregates_are_mistral_evals_with_unrated_left_out():
    items = [{"status": "rated", "rating": r, "category": c, "turn": t}
             for r, c, t in [(8, "charts", 0), (4, "charts", 1), (6, "tables", 0)]]
    items += [{"status": "unrated", "rating": None, "category": "tables", "turn": 1},
              {"status": "error", "rating": None, "category": "charts", "turn": 0}]
    a = aggregate(items)
    assert (a["rated"], a["unrated"], a["error"], a["items"]) == (3, 1, 1, 5)
    assert a["micro_average"]["mean"] == 6.0
    assert a["mistral_evals"] == {"micro_average_score": 6.0, "charts_average": 6.0,
                                  "tables_average": 6.0, "0_average": 7.0, "1_average": 4.0,
                                  "macro_average_score": round((6 + 6 + 7 + 4) / 4, 4)}
    lo, hi = a["micro_average"]["ci95"]
    assert 4 <= lo <= 6.0 <= hi <= 8
    lo, hi = a["macro_average"]["ci95"]
    assert lo <= a["macro_average"]["mean"] <= hi


# --- against a stand-in judge -----------------------------------------------------------------


@pytest.fixture
def standin(standins: Callable[..., tuple[str, int]]) -> Callable[..., str]:
    """start(**faults) -> the URL of a stand-in judge."""
    return lambda **cfg: standins({"name": "judge", "judge": True} | cfg)[0]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The conversations set (prompts/sample/conversations.yaml) plus marked items, generated
    once by the fake engine."""
    base = tmp_path_factory.mktemp("gen")
    prompts = base / "prompts"
    shutil.copytree(ROOT / "prompts" / "sample", prompts / "sample")
    doc = yaml.safe_load((prompts / "sample" / "conversations.yaml").read_text())
    for i, mark in enumerate([UNRATED, REFUSE, HANG]):
        doc["items"].append({"id": f"marked{i}", "messages": [
            {"role": "user", "images": ["images/table.png"], "text": f"Read it. {mark}"}],
            "expected": "Berlin.", "metadata": {"category": "tables", "turn": 0}})
    (prompts / "sample" / "conversations.yaml").write_text(yaml.safe_dump(doc))
    store = base / "store"
    r = runner(*TINY, f"store.root={store}", f"prompts.root={prompts}",
               "prompts.name=sample/conversations", env=FAKE)
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = run_dirs_of(store)
    return SimpleNamespace(base=base, prompts=prompts, store=store, run=run)


def copy_of(g: SimpleNamespace, tmp: Path) -> Path:
    """A private copy of the generated store (the judgements go beside the run)."""
    shutil.copytree(g.store, tmp / "store", ignore=shutil.ignore_patterns(".locks"))
    return tmp / "store" / g.run.name


def judge(run: Path, *overrides: str, prompts: Path, env: dict | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner.results", "judge", str(run),
                           *overrides, "--json"], cwd=prompts.parent, text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


def compact(x: object) -> str:
    """As the report's data holds it (html._page)."""
    return json.dumps(x, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def lines(run: Path) -> list[dict]:
    return [json.loads(x) for f in (run / "judgements").glob("*.jsonl")
            for x in f.read_text().splitlines()]


def whole_lines(run: Path) -> int:
    """The judgements written to the end of their line (one being written is not counted)."""
    return sum(f.read_text().count("\n") for f in (run / "judgements").glob("*.jsonl"))


@pytest.mark.process
def test_ratings_are_stored_and_a_second_scoring_asks_nothing(standin, generated, tmp_path):
    trace = tmp_path / "trace"
    url = standin(trace=str(trace), unrated=UNRATED, key="sekret-XQZ-key")
    run = copy_of(generated, tmp_path)
    args = [f"judge.url={url}", "judge.reasks=2", "judge.backoff_s=0",
            "judge.api_key_env=JUDGE_KEY"]
    key = {"JUDGE_KEY": "sekret-XQZ-key"}
    r = judge(run, *args, "judge.retries=0", prompts=generated.prompts, env=key)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads(r.stdout)
    ls = {x["id"]: x for x in lines(run)}
    assert len(ls) == 8 and m["items"] == 8
    # the unparsable judge: asked 1 + reasks times, then unrated (counted, out of the means)
    assert ls["marked0"]["status"] == "unrated" and ls["marked0"]["asks"] == 3
    assert m["unrated"] == 1
    rated = [x["rating"] for x in ls.values() if x["status"] == "rated"]
    assert m["micro_average"]["mean"] == round(sum(rated) / len(rated), 4)
    assert not [f for f in run.parent.rglob("*") if f.is_file() and b"sekret" in f.read_bytes()]
    bad = judge(run, *args, prompts=generated.prompts, env={"JUDGE_KEY": "wrong"})
    assert bad.returncode == 2 and "refused the request (HTTP 401)" in bad.stderr, bad.stderr
    calls = trace.read_text().count("post")
    assert calls == sum(x["asks"] for x in ls.values()) == m["cost"]["asks"]

    again = judge(run, *args, prompts=generated.prompts, env=key)
    assert again.returncode == 0 and json.loads(again.stdout) == m
    assert trace.read_text().count("post") == calls  # no call the second time
    # `results show` and the report show each judgement beside its output, and a later turn's
    # earlier turns (collapsed in the report)
    show = subprocess.run([sys.executable, "-m", "runner.results", "show", str(run), "--n",
                           "8"], cwd=generated.base, text=True, capture_output=True,
                          env={**os.environ, "COLUMNS": "400"})
    assert show.returncode == 0, show.stderr
    assert f"judged: judge mm_mt_bench ({m['judge']['id']}" in show.stdout
    assert f"mm_mt_bench: {ls['chart_t1']['rating']:g}" in show.stdout
    assert "mm_mt_bench: unrated (no rating" in show.stdout
    rep = subprocess.run([sys.executable, "-m", "runner.results", "report", str(run), "--out",
                          str(tmp_path / "r.html")], cwd=generated.base, text=True,
                         capture_output=True)
    assert rep.returncode == 0, rep.stderr
    page = (tmp_path / "r.html").read_text()
    assert compact(["mm_mt_bench", ls["chart_t1"]["rating"], "rated",
                    ls["chart_t1"]["judgement"]]) in page
    assert compact({"h": [["user", "Which quarter had the highest revenue?"],
                          ["assistant", "Q3 had the highest revenue, 27 M$."]]})[1:-1] in page

    other = judge(run, *args, "judge.max_tokens=100", prompts=generated.prompts, env=key)
    assert json.loads(other.stdout)["judge"]["id"] != m["judge"]["id"]  # another score set
    assert trace.read_text().count("post") == 2 * calls


@pytest.mark.process
def test_a_timeout_is_retried_a_refusal_is_not_then_the_items_judge_errors(
        standin, generated, tmp_path):
    trace = tmp_path / "trace"
    url = standin(trace=str(trace), refuse=REFUSE, hang=HANG)
    run = copy_of(generated, tmp_path)
    args = [f"judge.url={url}", "judge.retries=2", "judge.backoff_s=0.01", "judge.timeout_s=1"]
    r = judge(run, *args, prompts=generated.prompts)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads(r.stdout)
    ls = {x["id"]: x for x in lines(run)}
    assert ls["marked1"]["status"] == "error" and "HTTP 400" in ls["marked1"]["reason"]
    assert "(not retried)" in ls["marked1"]["reason"]  # a 400 would be refused again
    assert ls["marked2"]["status"] == "error"
    assert "no answer within judge.timeout_s=1" in ls["marked2"]["reason"]
    assert "(after 3 tries)" in ls["marked2"]["reason"]
    assert (m["error"], m["rated"]) == (2, 6)  # counted, out of the means
    assert posts(trace, 6 + 1 + 3) == 6 + 1 + 3
    # a rerun asks the errors again, and only them
    r = judge(run, *args, prompts=generated.prompts)
    assert posts(trace, 10 + 4) == 10 + 4


def posts(trace: Path, n: int) -> int:
    """The POSTs the stand-in traced, once it has traced `n` (or 30 s passed): a request the
    judge gave up on (its timeout) may still wait in the server's backlog when the judge exits;
    the server reads it and traces it then."""

    end = time.monotonic() + 30
    while trace.read_text().count("post") < n and time.monotonic() < end:
        time.sleep(0.05)
    return trace.read_text().count("post")


@pytest.mark.process
def test_judge_errors_count_against_the_error_budget(standin, generated, tmp_path):
    url = standin(refuse=REFUSE, hang=HANG)
    run = copy_of(generated, tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["prompts"]["max_error_rate"] = 0.1
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = judge(run, f"judge.url={url}", "judge.retries=0", "judge.timeout_s=1",
              prompts=generated.prompts)
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 3 and "over prompts.max_error_rate=0.1" in said, said
    assert "Traceback" not in said


@pytest.mark.process
def test_an_unreachable_judge_is_one_sentence_and_nothing_is_written(generated, tmp_path):
    run = copy_of(generated, tmp_path)
    r = judge(run, "judge.url=http://127.0.0.1:9", prompts=generated.prompts)
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and said.count("error:") == 1 and "Traceback" not in said, said
    assert "The judge at http://127.0.0.1:9 does not answer" in said
    assert not (run / "judgements").exists()


@pytest.mark.process
def test_a_judge_that_dies_mid_scoring_keeps_what_was_judged(standin, generated, tmp_path):
    url = standin(die_after=3)
    run = copy_of(generated, tmp_path)
    r = judge(run, f"judge.url={url}", "judge.in_flight=1", "judge.retries=1",
              "judge.backoff_s=0", prompts=generated.prompts)
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 3 and "stopped answering" in said and "Traceback" not in said, said
    assert len(lines(run)) == 3 and all(x["status"] == "rated" for x in lines(run))


@pytest.mark.process
def test_kill_9_mid_scoring_then_the_rerun_loses_and_repeats_nothing(standin, generated,
                                                                      tmp_path):
    """The stand-in holds every request after the 3rd answer until the gate file exists: the
    scorer cannot pass that point, so it is killed there, with 3 judgements stored."""
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    url = standin(trace=str(trace), gate_after=3, gate=str(gate))
    run = copy_of(generated, tmp_path)
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen([sys.executable, "-m", "runner.results", "judge", str(run),
                          f"judge.url={url}", "judge.in_flight=1"], cwd=generated.base,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    p.log = log  # type: ignore[attr-defined]
    # the worker sends the 4th request while the main thread may still be writing the 3rd
    # judgement: wait for both (the 4th is held, so no 4th judgement can follow)
    wait_for(p, lambda: trace.exists() and trace.read_text().count("post") == 4
             and whole_lines(run) == 3, "the 4th request held and 3 judgements stored", 120)
    assert len(lines(run)) == 3
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    gate.touch()
    r = judge(run, f"judge.url={url}", prompts=generated.prompts)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [x["id"] for x in lines(run)]
    assert len(ids) == len(set(ids)) == 8  # nothing lost, nothing judged twice
    assert trace.read_text().count("post") == 4 + 5
    assert json.loads(r.stdout)["rated"] == 8


# --- the client against a faulty gateway (issue 39, Must have 8) ------------------------------

KEY = "sk-XQZ-5f1e9c3b7a2d48e6"


def endpoint(url: str, *overrides: str) -> Endpoint:
    """The judge client for this stand-in (the key from JUDGE_KEY), its waits recorded instead
    of slept."""
    ep = Endpoint(judge_config([f"judge.url={url}", "judge.api_key_env=JUDGE_KEY",
                                "judge.backoff_s=0.5", *overrides]), Path("unused"))
    ep.waits = []  # type: ignore[attr-defined]
    ep.sleep = ep.waits.append  # type: ignore[attr-defined]
    return ep


def chat(text: str) -> dict:
    return {"model": "judge", "messages": [{"role": "user", "content": text}]}


def logged(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.process
def test_a_redirect_is_not_followed_so_the_key_never_reaches_another_host(
        standins, generated, tmp_path, monkeypatch):
    """Stand-in A answers 302 to stand-in B: B must not see the key on the /v1/models GET, on
    the chat POST, or at all; the models check says so in one sentence."""
    log_b = tmp_path / "b.log"
    b, _ = standins({"name": "judge", "judge": True, "log": str(log_b)})
    a, _ = standins({"name": "judge", "judge": True, "redirect": b})
    monkeypatch.setenv("JUDGE_KEY", KEY)
    ep = endpoint(a, "judge.retries=2")
    said = []
    for call in (ep.model, lambda: ep.ask(chat("hello"))):
        try:
            said.append(str(call()))
        except (UserError, JudgeFailed) as e:
            said.append(str(e))
    assert [r for r in logged(log_b) if KEY in json.dumps(r)] == [], said
    assert logged(log_b) == []  # nothing at all goes to the other host
    assert f"answered HTTP 302 to /v1/models (a redirect to {b}/v1/models" in said[0], said
    assert "HTTP 302 to " in said[1] and "not followed" in said[1], said
    assert ep.waits == []  # a redirect is not retried
    # the CLI: one sentence, exit 2, nothing written, and still nothing at B
    run = copy_of(generated, tmp_path)
    r = judge(run, f"judge.url={a}", "judge.api_key_env=JUDGE_KEY", prompts=generated.prompts,
              env={"JUDGE_KEY": KEY})
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 2 and "redirect" in out and "Traceback" not in out, out
    assert logged(log_b) == []


def test_no_redirect_handler_follows_https_to_http():
    """Every redirect is refused, so https -> http is too (no TLS stand-in needed)."""
    from runner.results.judging.judge import NoRedirect

    req = urllib.request.Request("https://judge.example/v1/models",
                                 headers={"Authorization": f"Bearer {KEY}"})
    for code in (301, 302, 303, 307, 308):
        assert NoRedirect().redirect_request(req, None, code, "Moved", {},
                                             "http://other.example/v1/models") is None


@pytest.mark.process
def test_json_that_is_not_an_object_is_a_judge_error_not_a_traceback(standins, generated,
                                                                      tmp_path, monkeypatch):
    url, _ = standins({"name": "judge", "judge": True, "answers": {
        "GET /v1/models": [{"body": "[]"}], "not-an-object": [{"body": "[]"}, {"body": "null"}],
        UNRATED: [{"body": "[]"}, {"body": "null"}, {"body": '{"choices": [1]}'}]}})
    monkeypatch.setenv("JUDGE_KEY", KEY)
    ep = endpoint(url, "judge.retries=1")
    with pytest.raises(UserError, match=r"/v1/models with JSON that is not an object"):
        ep.model()
    with pytest.raises(JudgeFailed, match=r"not a JSON object \(null\) \(after 2 tries\)"):
        ep.ask(chat("not-an-object"))
    # through the CLI: that item's line is an error, counted; the others are rated
    run = copy_of(generated, tmp_path)
    r = judge(run, f"judge.url={url}", "judge.model=judge", "judge.retries=2",
              "judge.backoff_s=0", prompts=generated.prompts)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 0 and "Traceback" not in out, out
    ls = {x["id"]: x for x in lines(run)}
    assert ls["marked0"]["status"] == "error", ls["marked0"]
    assert "not a JSON object" in ls["marked0"]["reason"]
    assert json.loads(r.stdout)["error"] == 1


@pytest.mark.process
def test_retry_after_is_honoured_on_429_and_503_and_bounded(standins, tmp_path, monkeypatch):
    """The waits are recorded by an injected sleep, the HTTP date read against an injected
    clock: no wall clock in the test."""
    from email.utils import formatdate

    t0 = 1_800_000_000.0
    log = tmp_path / "log"
    url, _ = standins({"name": "judge", "judge": True, "log": str(log), "answers": {
        "busy": [{"status": 429, "headers": {"Retry-After": "7"}, "body": "{}"},
                 {"status": 503, "headers": {"Retry-After": formatdate(t0 + 30, usegmt=True)},
                  "body": "{}"},
                 {"status": 503, "body": "{}"}],
        "quota": [{"status": 429, "headers": {"Retry-After": "86400"}, "body": "{}"}]}})
    monkeypatch.setenv("JUDGE_KEY", KEY)
    ep = endpoint(url, "judge.retries=3")
    ep.clock = lambda: t0  # type: ignore[attr-defined]
    assert "Rating: [[" in ep.ask(chat("busy"))["choices"][0]["message"]["content"]
    # backoff 0.5 doubles (0.5, 1, 2); Retry-After raises a wait, never lowers it
    assert ep.waits == [7.0, 30.0, 2.0], ep.waits
    assert len(logged(log)) == 4
    ep.waits.clear()
    with pytest.raises(JudgeFailed, match=r"HTTP 429: .*Retry-After 86400 s, over the "
                                          r"bound of 300 s"):
        ep.ask(chat("quota"))
    assert ep.waits == [] and len(logged(log)) == 5


@pytest.mark.process
def test_a_4xx_is_not_retried_but_408_429_and_5xx_are(standins, tmp_path, monkeypatch):
    log = tmp_path / "log"
    codes = (400, 401, 403, 404, 422, 408, 429, 500, 502)
    url, _ = standins({"name": "judge", "judge": True, "log": str(log), "answers": {
        f"S{c}": 3 * [{"status": c, "body": json.dumps({"error": {"message": f"no {c}"}})}]
        for c in codes}})
    monkeypatch.setenv("JUDGE_KEY", KEY)
    ep = endpoint(url, "judge.retries=2")
    asked = {}
    for c in codes:
        before = len(logged(log))
        with pytest.raises(JudgeFailed) as e:
            ep.ask(chat(f"S{c}"))
        asked[c] = len(logged(log)) - before
        assert f"HTTP {c}: no {c}" in str(e.value)
    assert asked == {400: 1, 401: 1, 403: 1, 404: 1, 422: 1, 408: 3, 429: 3, 500: 3, 502: 3}


@pytest.mark.process
def test_an_error_body_that_echoes_the_key_is_stored_redacted(standins, generated, tmp_path):
    """A gateway that reports the request's headers in its error body (HTTP 400 and 502): the
    key appears nowhere under the store after the run."""
    echo = [{"status": 400, "body": None}]
    url, _ = standins({"name": "judge", "judge": True, "key": KEY, "answers": {
        REFUSE: 3 * echo, UNRATED: 3 * [{"status": 502, "body": None}]}})
    run = copy_of(generated, tmp_path)
    r = judge(run, f"judge.url={url}", "judge.api_key_env=JUDGE_KEY", "judge.retries=2",
              "judge.backoff_s=0", prompts=generated.prompts, env={"JUDGE_KEY": KEY})
    assert r.returncode == 0, r.stdout + r.stderr
    ls = {x["id"]: x for x in lines(run)}
    assert ls["marked1"]["status"] == ls["marked0"]["status"] == "error"
    assert "echo: " in ls["marked1"]["reason"] and "'Authorization'" in ls["marked1"]["reason"]
    # no piece of it either: a reason cut to its first 200 characters must not keep a prefix
    pieces = {KEY[i:i + 8].encode() for i in range(len(KEY) - 7)}
    assert [(f.name, p) for f in run.parent.rglob("*") if f.is_file() for p in pieces
            if p in f.read_bytes()] == []
    assert not [p for p in pieces if p.decode() in r.stdout + r.stderr]
