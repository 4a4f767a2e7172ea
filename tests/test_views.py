"""Views (issue 39): every figure a run reports covers exactly the items its config planned,
whatever else its folder holds, and equals what a cold run of the same config reports in a
fresh store. Benchmark imports are addressed by what produced them and put in place in one
step; scores follow the scoring code; a judge reads the items recorded for its run.

Jobs run in this process on the fake engine (deterministic outputs: a hash of the prompt)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import FAKE, ROOT, TINY, make_cfg, run_dirs_of, runner
from runner.job.recipe import Job
from runner.results.card.card import card
from runner.results.runs.load import Ref, load_run
from runner.store.view import read_view

pytestmark = pytest.mark.process  # jobs on the fake engine (a child process) and subprocesses

PNG = base64.b64decode(  # 1x1 red PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


def job(store: Path, *over: str) -> Any:
    return Job(make_cfg(*TINY, f"store.root={store}", *over), list(over)).run()


def figures(store: Path, h: str) -> dict[str, Any]:
    """What a run reports: metrics.json (without the last invocation's speed) and its card
    row (without its folder-specific paths)."""
    m = json.loads((store / h / "metrics.json").read_text())
    m.pop("completion_tokens_per_s", None)
    (row,) = card([load_run(store / h)])["rows"]
    return {"metrics": m, "card": {k: row[k] for k in ("value", "ci95", "n", "errors",
                                                      "subset")}}


def test_a_run_reports_only_the_items_its_config_planned(tmp_path, fake_engine):
    """limit=2, then all 5, then limit=2 again: the third run's summary, metrics.json and
    card cover its 2 items (the folder holds 5), as a cold limit=2 run's do."""
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    job(warm, "prompts.limit=2")
    job(warm)
    s = job(warm, "prompts.limit=2")
    c = job(cold, "prompts.limit=2")
    assert (s.status, s.planned, s.cached, s.hash) == ("cached", 2, 2, c.hash)
    got, want = figures(warm, s.hash), figures(cold, c.hash)
    assert got == want
    assert (got["metrics"]["items"], got["metrics"]["view"]["planned"]) == (2, 2)
    assert got["card"]["subset"] is True  # prompts.limit: a subset of the set
    run = load_run(warm / s.hash)
    assert len(run.items) == 2 and len(load_run(warm / s.hash, everything=True).items) == 5
    # the whole set's view is still there, by name, with its own figures
    (other,) = [v for v in (warm / s.hash / "views").iterdir() if v.name != run.view.id]
    whole = load_run(Ref(warm / s.hash, other.name))
    assert len(whole.items) == 5 and whole.metrics["view"]["planned"] == 5


def mt_source(path: Path, question: str) -> Path:
    """An MM-MT-Bench export as JSONL: two one-turn conversations about an image."""
    url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    rows = [{"id": f"r{i}", "category": "charts", "image": url, "conversation": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                         "text": f"{question} {i}"}]},
        {"role": "assistant", "content": f"answer {i}"}]} for i in range(2)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_source_a_then_b_then_a_reports_a(tmp_path, fake_engine):
    a = mt_source(tmp_path / "a.jsonl", "What is shown?")
    b = mt_source(tmp_path / "b.jsonl", "Which colour is it?")
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    bench = ("prompts=mm_mt_bench", "model.limit_mm_per_prompt.image=7", "sampling.max_tokens=8")
    ra = job(warm, *bench, f"prompts.source={a}")
    rb = job(warm, *bench, f"prompts.source={b}")
    assert ra.hash == rb.hash and ra.view != rb.view  # source is not hashed: two views
    again = job(warm, *bench, f"prompts.source={a}")
    c = job(cold, *bench, f"prompts.source={a}")
    assert again.view == ra.view == c.view
    assert figures(warm, again.hash) == figures(cold, c.hash)
    # where the items came from, in the manifest and the card
    view = read_view(warm / again.hash)
    assert view is not None
    src = view.brief()
    import hashlib

    assert src["source_id"]["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert (src["split_rows"], src["rows_planned"], src["subset"]) == (2, 2, False)
    assert src["protocol"]["path"] == "eval/tasks/mm_mt_bench.py" and src["protocol"]["commit"]
    manifest = json.loads((warm / again.hash / "manifest.json").read_text())
    assert manifest["view"]["id"] == view.id and manifest["view"]["n"] == 2
    (row,) = card([load_run(warm / again.hash)])["rows"]
    assert row["view"]["source_id"] == src["source_id"]


def test_imports_are_keyed_by_protocol_and_importer(tmp_path, monkeypatch):
    """A change to the benchmark's harness.yaml entry or to the importer's code imports
    again, into a folder of its own; the old import stays as it was."""
    from runner.benchmarks import build, importers
    from runner.benchmarks.preset import resolve

    src = mt_source(tmp_path / "a.jsonl", "What is shown?")

    def imported() -> Path:
        cfg = make_cfg(*TINY, "prompts=mm_mt_bench", f"prompts.source={src}",
                       f"store.root={tmp_path / 'o'}")
        resolve(cfg)
        return Path(cfg.prompts.root) / "mm_mt_bench"

    first = imported()
    assert imported() == first  # nothing changed: the same import
    proto = json.loads(json.dumps(importers.PROTOCOL["mm_mt_bench"]))
    proto["sampling"]["max_tokens"] = 1024
    monkeypatch.setitem(importers.PROTOCOL, "mm_mt_bench", proto)
    second = imported()
    assert second != first and "max_tokens: 1024" in (second / "set.yaml").read_text()
    assert "max_tokens: 4096" in (first / "set.yaml").read_text()  # the harness's, kept
    code = tmp_path / "importer.py"
    code.write_text("# an importer\n")
    monkeypatch.setattr(build, "CODE", [code])
    third = imported()
    code.write_text("# an importer, fixed\n")
    assert imported() not in (first, second, third)


def test_a_failed_import_leaves_the_last_one_intact(tmp_path):
    """An import that fails (a source with no rows) leaves no set behind, and the import
    before it still plans its own items."""
    from runner.benchmarks.preset import resolve
    from runner.errors import UserError
    from runner.plan.load import load_plan

    a = mt_source(tmp_path / "a.jsonl", "What is shown?")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")

    def plan(src: Path) -> list[str]:
        cfg = make_cfg(*TINY, "prompts=mm_mt_bench", f"prompts.source={src}",
                       f"store.root={tmp_path / 'o'}")
        resolve(cfg)
        return [it.id for it in load_plan(cfg, show=False).items]

    assert plan(a) == ["r0_turn0", "r1_turn0"]
    with pytest.raises(UserError, match="no rows"):
        plan(empty)
    assert plan(a) == ["r0_turn0", "r1_turn0"]
    cache = tmp_path / "o" / ".cache" / "benchmarks"
    assert len(list(cache.glob("*/mm_mt_bench/imported.json"))) == 1
    assert not [x for x in cache.rglob("*") if x.name.endswith((".tmp", ".old"))]


GATED_IMPORT = """
import os, sys
from runner.benchmarks import importers
put, reached, gate = importers.Images.put, sys.argv[2], sys.argv[3]
def gated(self, *a, **k):
    out = put(self, *a, **k)
    open(reached, "w").close()     # one image written: the test may kill us now
    os.read(os.open(gate, os.O_RDONLY), 1)  # the gate: a FIFO nobody writes
    return out
importers.Images.put = gated
sys.argv = ["runner", *sys.argv[4:]]
from runner.__main__ import main
main()
"""


def test_a_kill_9_mid_import_then_a_rerun_gives_the_cold_import(tmp_path):
    """The import is killed (SIGKILL) after its first image, held at a gate; the rerun
    imports the same set as a cold import in a fresh store, and nothing of the killed one
    is left."""
    src = mt_source(tmp_path / "a.jsonl", "What is shown?")
    reached, gate = tmp_path / "reached", tmp_path / "gate"
    os.mkfifo(gate)
    args = [*TINY, "prompts=mm_mt_bench", f"prompts.source={src}", "dry_run=true"]
    p = subprocess.Popen([sys.executable, "-c", GATED_IMPORT, "x", str(reached), str(gate),
                          *args, f"store.root={tmp_path / 'warm'}"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not reached.exists():  # the child writes it, then blocks on the FIFO
            assert p.poll() is None, p.stderr.read() if p.stderr else ""
            os.sched_yield()
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    cache = tmp_path / "warm" / ".cache" / "benchmarks"
    assert not list(cache.glob("*/mm_mt_bench/imported.json"))  # no set under a stamp
    for store in ("warm", "cold"):
        r = runner(*args, f"store.root={tmp_path / store}", env=FAKE)
        assert r.returncode == 0, r.stdout + r.stderr

    def tree(store: str) -> dict[str, bytes]:
        (d,) = (tmp_path / store / ".cache" / "benchmarks").glob("*/mm_mt_bench")
        files = {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*"))
                 if f.is_file()}
        stamp = json.loads(files.pop("imported.json"))
        return files | {"key": stamp["key"].encode()}

    assert tree("warm") == tree("cold")
    assert not [x for x in cache.rglob("*") if x.name.endswith((".tmp", ".old"))]


RESCORE = """
import json, sys
from pathlib import Path
from runner.results.scoring.score import score_run
print(json.dumps(score_run(Path(sys.argv[1]))))
"""


def test_scores_follow_the_scoring_code(tmp_path):
    """A stored metrics.json is reused while the scoring code is unchanged; an edited metric
    (in a copy of the package) rescores without --force."""
    import fakes

    d = fakes.write_run(tmp_path / "store", "a" * 16, [
        fakes.record("q1", "Paris.", expected="paris"), fakes.record("q2", "x", expected="y")])
    pkg = tmp_path / "pkg"
    shutil.copytree(ROOT / "runner", pkg / "runner",
                    ignore=shutil.ignore_patterns("__pycache__", "_shipped"))
    env = {**os.environ, "PYTHONPATH": str(pkg)}

    def score() -> dict[str, Any]:
        r = subprocess.run([sys.executable, "-c", RESCORE, str(d)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert score()["accuracy"] == 0.5  # `exact` normalizes "Paris." to "paris"
    assert score()["accuracy"] == 0.5
    scorers = pkg / "runner" / "results" / "scoring" / "scorers.py"
    text = scorers.read_text()
    assert "def normalize(" in text
    scorers.write_text(text.replace("def normalize(", "def _old_normalize(", 1)
                       + "\n\ndef normalize(s):\n    return s  # no normalization\n")
    assert score()["accuracy"] == 0.0  # rescored by the edited metric


def test_a_judge_reads_the_items_recorded_for_its_run(tmp_path, fake_engine, standins):
    """Judged after the benchmark was imported from another source (the run's config.yaml
    now names that import): the view's own items are judged, from the import it recorded."""
    from runner.results.cli.evaluate import judge_config
    from runner.results.judging.judge import judge_run

    a = mt_source(tmp_path / "a.jsonl", "What is shown?")
    b = mt_source(tmp_path / "b.jsonl", "Which colour is it?")
    store = tmp_path / "o"
    bench = ("prompts=mm_mt_bench", "model.limit_mm_per_prompt.image=7", "sampling.max_tokens=8")
    ra = job(store, *bench, f"prompts.source={a}")
    job(store, *bench, f"prompts.source={b}")
    url, _ = standins({"name": "judge", "judge": True})
    j = judge_config([f"judge.url={url}"])
    m = judge_run(store / ra.hash, j, view=read_view(store / ra.hash, ra.view))
    assert (m["items"], m["rated"]) == (2, 2)
    lines = [json.loads(x) for x in next((store / ra.hash / "judgements").glob("*.jsonl"))
             .read_text().splitlines()]
    assert {x["key"] for x in lines} == set(read_view(store / ra.hash, ra.view).keys)


@pytest.mark.process
def test_a_sweep_over_limits_has_a_row_per_view_and_no_self_pair(tmp_path):
    store = tmp_path / "o"
    r = runner("-m", *TINY, f"store.root={store}", "prompts.limit=2,5",
               f"hydra.sweep.dir={tmp_path / 'sweep'}", env=FAKE)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((tmp_path / "sweep" / "runs.json").read_text())
    assert [x["hash"] for x in rows] == [rows[0]["hash"]] * 2  # one run folder ...
    assert rows[0]["view"] != rows[1]["view"]  # ... two views
    assert [x["metrics"]["view"]["planned"] for x in rows] == [2, 5]
    assert [x["metrics"]["items"] for x in rows] == [2, 5]
    (run,) = run_dirs_of(store)
    c = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(store), "card",
                        "--sweep", str(tmp_path / "sweep"), "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    got = json.loads(c.stdout)
    assert [x["n"] for x in got["rows"]] == [2, 3] and got["pairs"] == []
    assert {x["ref"] for x in got["rows"]} == {f"{run.name}@{x['view']}" for x in rows}


def test_a_seeded_subset_is_marked_on_the_card(tmp_path, fake_engine, monkeypatch):
    """prompts.subset.vqav2=2 of a 3-row split: the view records the selection, and the card
    marks the row as a (seeded) subset beside the published figure; the whole split is not.
    (The tiny model has no published figure: Pixtral-12B's VQAv2 figure stands in for it.)"""
    from runner.results.card import card as card_mod
    from runner.results.card.published import FIGURES

    pub = FIGURES["Pixtral-12B-2409"]["vqav2"]
    monkeypatch.setattr(card_mod, "figure", lambda fam, bench: pub if bench == "vqav2" else None)
    src = tmp_path / "vqav2.jsonl"
    src.write_text("".join(json.dumps({
        "question_id": i, "question": f"How many cats? {i}", "answers": [{"answer": "2"}],
        "image": "data:image/png;base64," + base64.b64encode(PNG).decode()}) + "\n"
        for i in (1, 2, 3)))
    over = ("prompts=vqav2", f"prompts.source={src}")
    sub = job(tmp_path / "o", *over, "prompts.subset.vqav2=2")
    whole = job(tmp_path / "o", *over)
    (srow,) = card([load_run(Ref(tmp_path / "o" / sub.hash, sub.view))])["rows"]
    (wrow,) = card([load_run(Ref(tmp_path / "o" / whole.hash, whole.view))])["rows"]
    assert (srow["n"], srow["subset"], wrow["n"], wrow["subset"]) == (2, True, 3, False)
    assert srow["view"]["selection"] == {"rule": "seeded", "n": 2, "seed": 0}
    assert "this run is a seeded subset (2 items)" in srow["published"]["note"]
    assert "subset" not in (wrow["published"] or {}).get("note", "")
