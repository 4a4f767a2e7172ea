"""Scorers on awkward outputs, score_run on stored results, the rescoring CLI, the MMMU
converter. No engine: run folders and exports are written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fakes
from runner.results.scoring.score import score_run
from runner.results.scoring.scorers import check_spec, parse_choice, score_output

ROOT = Path(__file__).resolve().parent.parent
OPTS = ["London", "Paris", "Berlin", "Madrid"]


@pytest.mark.parametrize("output, letter", [
    ("The answer is (B).", "B"),
    ("B) because Paris is the capital", "B"),
    ("**C**", "C"),
    ("The answer is **C**.", "C"),
    ("b", "B"),
    ("Answer: D", "D"),
    ("D. Madrid", "D"),
    ("A cat is on the map, so the answer is B.", "B"),  # the last letter named wins
    ("(A) looks tempting, but (C) is right.", "C"),
    ("C: it is Berlin", "C"),
    ("Paris", "B"),  # the option's text instead of its letter
    ("The capital of France is Paris, of course", "B"),
    ("berlin.", "C"),
    ("none of these", None),
    ("I cannot tell from the image", None),
    ("", None),
])
def test_choice_letter(output: str, letter: str | None) -> None:
    assert parse_choice(output, ["A", "B", "C", "D"], OPTS) == letter


def test_choice_scores() -> None:
    assert score_output("choice", "The answer is (B).", "B", OPTS).correct
    assert score_output("choice", "Paris", "Paris", OPTS).correct  # expected as option text
    s = score_output("choice", "none of these", "B", OPTS)
    assert (s.score, s.reason) == (0.0, "no option letter or option text found")
    assert score_output("choice", "(E)", "E", None).correct  # no options: A..expected


@pytest.mark.parametrize("spec, output, expected, ok", [
    ("exact", "  Berlin. ", "berlin", True),
    ("exact", "**Berlin**", "Berlin", True),
    ("exact", "Berlin is largest", "Berlin", False),
    ("contains", "By far, BERLIN is the largest.", "Berlin", True),
    ("contains", "Paris", "Berlin", False),
    ("regex", "Q3 had 27 M$", r"q3\b.*27", True),
    ("regex:Answer:\\s*(\\w+)", "Reasoning... Answer: Q3", "q3", True),
    ("regex:Answer:\\s*(\\w+)", "Answer: Q2. Wait. Answer: Q3", "Q3", True),  # the last match
    ("regex:Answer:\\s*(\\w+)", "Q3", "Q3", False),
    ("numeric", "The total is 8.00 EUR.", "8", True),
    ("numeric", "Items: 2.50, 1.80 and 3.70; the total is 8.", "8.00", True),
    ("numeric", "The total is 8.01", "8", False),
    ("numeric:0.05", "The total is 8.01", "8", True),
    ("numeric:1%", "about 1,010 people", "1000", True),
    ("numeric:1%", "about 1,020 people", "1000", False),
    ("numeric", "-3.5e2", "-350", True),
    ("numeric", "x = 3 + 4 = 7", "7", True),  # after the last cue: 7 only
    ("numeric", "x = 3 + 4 = 7", "3", False),
    ("numeric", "In this 2019 chart, the answer is 12", "12", True),
    ("numeric", "In this 2019 chart, the answer is 12", "2019", False),
    ("numeric", "no idea", "8", False),
])
def test_scorers(spec: str, output: str, expected: str, ok: bool) -> None:
    assert score_output(spec, output, expected).correct is ok


def test_bad_specs() -> None:
    for bad in ("fuzzy", "numeric:abc", "regex:("):
        with pytest.raises(Exception):  # noqa: B017 - ValueError or re.error
            check_spec(bad)


def write_run(d: Path, records: list[dict], prompts: dict | None = None) -> Path:
    """A run folder with these records (`key` k-<id> unless given) and a torn last line."""
    recs = [fakes.record(r["id"], r.get("output"), error=r.get("error"),
                         **{"key": "k-" + r["id"]} | {k: v for k, v in r.items()
                                                      if k not in ("id", "output", "error")})
            for r in records]
    return fakes.write_run(d.parent, d.name, recs, config={"prompts": prompts or {"name": "none"}},
                           torn=True, throughput={"completion_tokens_per_s": 42.0})


def test_score_run(tmp_path: Path) -> None:
    set_file = tmp_path / "set.yaml"
    set_file.write_text(yaml.safe_dump({"scorer": "contains", "items": [
        {"id": "mc", "text": "?", "scorer": "choice", "metadata": {"options": OPTS}},
        {"id": "num", "text": "?", "scorer": "numeric:0.1"},
    ]}))
    d = write_run(tmp_path / "run", [
        {"id": "mc", "output": "It is Paris.", "expected": "B", "tags": ["geo"]},
        {"id": "num", "output": "about 8.05", "expected": "8", "tags": ["math"]},
        {"id": "set", "output": "Berlin, clearly", "expected": "berlin", "tags": ["geo"]},
        {"id": "rec", "output": "berlin", "expected": "Berlin", "scorer": "regex:^(\\w+)$"},
        {"id": "err", "status": "error", "error": "too long", "expected": "x", "tags": ["geo"]},
        {"id": "free", "output": "a cat"},  # no expected answer: not scored
        {"id": "num", "output": "9", "expected": "8", "tags": ["math"], "key": "k-num2"},
    ])
    for f in (set_file, d / "results.jsonl", d / "manifest.json"):  # clearly older than scores
        os.utime(f, ns=(f.stat().st_mtime_ns - 10**9,) * 2)
    m = score_run(d, set_file)
    scores = [json.loads(x) for x in (d / "scores.jsonl").read_text().splitlines()]
    assert [(s["id"], s["scorer"], s["correct"]) for s in scores] == [
        ("mc", "choice", True), ("num", "numeric:0.1", True), ("set", "contains", True),
        ("rec", "regex:^(\\w+)$", True), ("err", "contains", False),
        ("num", "numeric:0.1", False)]
    assert set(scores[0]) == {"id", "key", "score", "correct", "scorer", "reason"}
    # metrics count each id once, its latest record (num: 9, wrong)
    assert m == json.loads((d / "metrics.json").read_text())
    assert m["scored"] == 5 and m["correct"] == 3 and m["accuracy"] == 0.6
    assert m["errors"] == 1 and m["items"] == 6 and m["completion_tokens_per_s"] == 42.0
    assert m["by_tag"] == {"geo": {"accuracy": pytest.approx(2 / 3, abs=1e-4), "scored": 3},
                           "math": {"accuracy": 0.0, "scored": 1}}
    assert not list(d.glob(".*tmp"))  # written atomically

    # up to date: nothing re-read or rewritten; a newer input (here the set) rescores
    before = (d / "scores.jsonl").stat().st_mtime_ns
    assert score_run(d, set_file) == m and (d / "scores.jsonl").stat().st_mtime_ns == before
    set_file.write_text(set_file.read_text().replace("numeric:0.1", "numeric:1"))
    assert score_run(d, set_file)["correct"] == 4  # 9 is within 1 of 8 now
    assert score_run(d, set_file, force=True)["correct"] == 4


def test_score_run_finds_the_runs_set_and_defaults_to_exact(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts" / "s").mkdir(parents=True)
    (tmp_path / "prompts" / "s" / "set.yaml").write_text(yaml.safe_dump(
        {"scorer": "numeric", "items": [{"id": "a", "text": "?"}]}))
    d = write_run(tmp_path / "r1", [{"id": "a", "output": "it is 3", "expected": "3"}],
                  {"name": "s", "root": "prompts"})
    assert score_run(d)["accuracy"] == 1.0  # set-level numeric, found via config.yaml
    d2 = write_run(tmp_path / "r2", [{"id": "a", "output": "it is 3", "expected": "3"}])
    assert score_run(d2)["accuracy"] == 0.0  # no set: exact


def test_cli_rescores_by_hash_without_vllm(tmp_path: Path) -> None:
    write_run(tmp_path / "outputs" / "0123456789abcdef",
              [{"id": "a", "output": "Berlin", "expected": "berlin", "tags": ["t"]}])
    code = ("import sys, runpy; sys.argv = ['x', '0123', '--root', 'outputs'];"
            "import runner.results.cli.main as c; rc = c.main(['score', *sys.argv[1:]]);"
            "import runner.results.report.html, runner.benchmarks.build;"
            "assert not {'vllm', 'torch'} & set(sys.modules), 'engine imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env={"PYTHONPATH": str(ROOT)}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "0123456789abcdef: accuracy 100.0% (1/1 scored, 0 errors)  t 100%" in r.stdout
    assert (tmp_path / "outputs" / "0123456789abcdef" / "metrics.json").exists()


def test_set_the_planner_refuses_is_read_as_yaml(tmp_path: Path) -> None:
    f = tmp_path / "set.yaml"
    f.write_text(yaml.safe_dump({"scorer": "contains", "notes": "a key the planner refuses",
                                 "items": [{"id": "a", "text": "?"}]}))
    d = write_run(tmp_path / "run", [{"id": "a", "output": "yes, Berlin", "expected": "berlin"}])
    assert score_run(d, f)["accuracy"] == 1.0
