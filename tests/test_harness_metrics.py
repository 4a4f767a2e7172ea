"""The harness's metrics (runner/results/scoring/metrics.py) against the corpus in
tests/data/harness_metrics.yaml: each case's score was worked out from mistral-evals'
eval/metrics.py (the line that decides it is named beside it). No engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fakes import record, write_run
from runner.results.scoring.metrics import levenshtein
from runner.results.scoring.score import score_run
from runner.results.scoring.scorers import check_spec, score_output

CORPUS = yaml.safe_load((Path(__file__).parent / "data" / "harness_metrics.yaml").read_text())
NAMES = {"E": "explicit_prompt_relaxed_correctness", "W": "anywhere_in_answer_relaxed_correctness"}
CASES = [(NAMES.get(c["metric"], c["metric"]), c["output"], c["expected"], c["score"])
         for c in CORPUS["cases"]]


def test_the_corpus_covers_every_metric_and_the_issues_edge_cases():
    by = {name.split(":")[0] for name, *_ in CASES}
    assert by == {*NAMES.values(), "anls", "vqa_match"} and len(CASES) >= 100
    outs = " ".join(o for _, o, _, _ in CASES)
    for needle in ("**Final Answer:**", "%", "$", ",", " kg", "B. 12 cm", '"Paris"'):
        assert needle in outs
    assert any(o == "" for _, o, _, _ in CASES)


@pytest.mark.parametrize("name, output, expected, want", CASES)
def test_each_score_equals_the_harness(name, output, expected, want):
    assert score_output(name, output, expected).score == want


@pytest.mark.parametrize("a, b", [("", ""), ("", "abc"), ("kitten", "sitting"),
                                  ("flaw", "lawn"), ("abc", "cba"), ("ab", "ba")])
def test_levenshtein_is_the_textbook_distance(a, b):
    def rec(x: str, y: str) -> int:  # the definition, recursively
        if not x or not y:
            return len(x) + len(y)
        return min(rec(x[1:], y) + 1, rec(x, y[1:]) + 1, rec(x[1:], y[1:]) + (x[0] != y[0]))
    assert levenshtein(a, b) == levenshtein(b, a) == rec(a, b)


def test_specs_and_bad_specs():
    for ok in ("anls", "anls:0.5", "anls:0", "vqa_match", "explicit_prompt_relaxed_correctness"):
        assert check_spec(ok) == ok
    for bad in ("anls:x", "anls:1.5", "vqa_match:3", "relaxed_correctness"):
        with pytest.raises(ValueError):
            check_spec(bad)


def test_other_scorers_take_the_best_of_a_list_of_references():
    assert score_output("exact", "Paris", ["London", "paris"]).correct
    assert score_output("numeric", "about 41", ["40", "41"]).correct
    assert not score_output("contains", "Berlin", ["London", "Paris"]).correct
    assert score_output("json", '["a", "b"]', ["a", "b"]).correct  # json: a list is a value


def test_a_run_scored_with_a_list_of_metrics_stores_each(tmp_path):
    """An item whose scorer is a list: the first is its score, every one is in `metrics`, and
    metrics.json averages each (the card reads them)."""
    both = [NAMES["E"], NAMES["W"]]
    recs = [record("a", "Final Answer: 12", expected="12", scorer=both),
            record("b", "so it is 12 here", expected="12", scorer=both),
            record("c", "x", expected="yes", scorer="vqa_match"),
            record("d", error="image unreadable", expected="12", scorer=both)]
    d = write_run(tmp_path, "m" * 16, recs)
    m = score_run(d)
    assert m["by_metric"][NAMES["E"]] == {"mean": 0.3333, "scored": 3}  # rounded to 4
    assert m["by_metric"][NAMES["W"]] == {"mean": 0.6667, "scored": 3}
    assert m["by_metric"]["vqa_match"] == {"mean": 0.0, "scored": 1}
    rows = {r["id"]: r for r in map(eval_json, (d / "scores.jsonl").read_text().splitlines())}
    assert rows["b"]["scorer"] == NAMES["E"] and rows["b"]["score"] == 0.0
    assert rows["b"]["metrics"] == {NAMES["E"]: 0.0, NAMES["W"]: 1.0}
    assert rows["d"]["metrics"] == {NAMES["E"]: 0.0, NAMES["W"]: 0.0}


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)


def test_a_set_may_name_a_list_of_metrics_and_the_planner_keeps_it(tmp_path):
    from runner.errors import UserError
    from runner.plan.sources import read_set

    f = tmp_path / "set.yaml"
    f.write_text(yaml.safe_dump({"scorer": [NAMES["E"], NAMES["W"]], "items": [
        {"id": "a", "text": "q", "expected": ["12", "12.0"]},
        {"id": "b", "text": "q", "expected": "x", "scorer": "anls:0.5"}]}))
    info, specs = read_set(f)
    assert info.scorer == [NAMES["E"], NAMES["W"]]
    assert [(s.scorer, s.expected) for s in specs] == [(None, ["12", "12.0"]), ("anls:0.5", "x")]
    f.write_text(yaml.safe_dump({"items": [{"id": "a", "text": "q", "scorer": []}]}))
    with pytest.raises(UserError, match="'scorer' must be a name or a non-empty list"):
        list(read_set(f)[1])


def test_results_score_prints_each_metric(tmp_path, capsys):
    from runner.results.cli.main import main

    both = [NAMES["E"], NAMES["W"]]
    d = write_run(tmp_path, "n" * 16, [
        record("a", "Final Answer: 12", expected="12", scorer=both),
        record("b", "it is 12", expected="12", scorer=both)])
    assert main(["--root", str(tmp_path), "score", d.name[:4]]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{NAMES['E']} 50.0%" in out and f"{NAMES['W']} 100.0%" in out
