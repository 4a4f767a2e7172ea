"""What the server client sends (runner/engine/fields.py, docs/server.md "What is sent"),
against the stand-in playing a server of OpenAI's chat API only: it refuses, with HTTP 400
worded as OpenAI's API words it, any field that API does not define (vLLM's `top_k`,
`return_token_ids`, ...) and returns no token ids, with or without `usage`. The run is complete
all the same, each item stored once, and the counts the server did not give are null."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_server import manifest, records, text_set

from conftest import ROOT, TINY, runner

pytestmark = pytest.mark.process  # the runner's processes, a stand-in server: full lane

VLLM_FIELDS = ["ignore_eos", "min_p", "min_tokens", "repetition_penalty", "return_token_ids",
               "top_k"]


def asked(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()]


@pytest.mark.parametrize("usage", [True, False], ids=["usage", "no-usage"])
def test_a_server_of_openai_fields_only_gets_a_complete_run(standin, tmp_path: Path, usage):
    fields, served = tmp_path / "fields", tmp_path / "served"
    url, _ = standin(openai_only=True, no_usage=not usage, fields=str(fields),
                     served=str(served))
    prompts, store = text_set(tmp_path / "p", 5), tmp_path / "store"
    # one request at a time: the refusal is learned once, on the first, and kept for the run
    r = runner(*TINY, f"engine.url={url}", "engine.trust_server=true", f"store.root={store}",
               f"prompts.root={prompts}", "prompts.name=texts", "sampling=sampled",
               "sampling.n=2", "engine.max_num_seqs=1")
    assert r.returncode == 0, r.stdout + r.stderr
    recs = records(store)
    assert sorted(x["id"] for x in recs) == [f"t{i:02d}" for i in range(5)]  # each once
    assert all(x["status"] == "ok" and len(x["outputs"]) == 2 for x in recs)
    for x in recs:  # what the server said, else null: never 0, never a guess
        words = len(x["prompt"].split())  # the stand-in's prompt_tokens: the text's words
        want = (words, 6) if usage else (None, None)  # usage: 3 tokens a sample, the total
        assert (x["prompt_tokens"], x["completion_tokens"]) == want, x
    log = asked(fields)
    assert [a["status"] for a in log] == [400] + [200] * 5
    assert set(VLLM_FIELDS) <= set(log[0]["fields"])
    assert all(set(a["fields"]).isdisjoint(VLLM_FIELDS) for a in log[1:]), log
    assert len(served.read_text().splitlines()) == 5  # each item answered once
    m = manifest(store)
    assert m["status"] == "complete" and m["server"]["refused_fields"] == VLLM_FIELDS
    assert m["counts"].get("without_token_counts") == (None if usage else 5)
    show = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(store), "show",
                           m["hash"]], text=True, capture_output=True, cwd=ROOT)
    assert show.returncode == 0 and ("?+?" in show.stdout) == (not usage), show.stdout


def test_a_refused_field_that_changes_the_outputs_is_each_items_error(standin, tmp_path: Path):
    """top_k=5 is not what a server without top_k computes: never left out silently."""
    url, _ = standin(openai_only=True)
    prompts, store = text_set(tmp_path / "p", 3), tmp_path / "store"
    r = runner(*TINY, f"engine.url={url}", "engine.trust_server=true", f"store.root={store}",
               f"prompts.root={prompts}", "prompts.name=texts", "sampling.top_k=5",
               "prompts.max_error_rate=1")
    assert r.returncode == 0, r.stdout + r.stderr
    recs = records(store)
    assert len(recs) == 3 and all(x["status"] == "error" for x in recs)
    for x in recs:
        assert x["error_kind"] == "sampling"
        assert "does not accept top_k (Unrecognized request arguments supplied:" in x["error"]
        assert "top_k=5" in x["error"]
