"""A sweep's points grouped by engine arguments (`hydra/launcher=grouped`, the default;
runner/launch/grouped.py): one engine start per group, every point with its own number and
folder. The engine is the fake one, its starts counted from its trace ("start <pid>")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, fake_env, make_cfg, runner
from runner.engine.args import media_root
from runner.launch.grouped import by_engine, engine_key

AXES = ["prompts.name=sample,letters", "model.max_model_len=4096,8192"]


def test_groups_keep_first_appearance_and_each_point_s_order():
    assert by_engine(["x", "y", "x", "y"]) == [[0, 2], [1, 3]]
    assert by_engine(["b", "a", "b", "c", "a"]) == [[0, 2], [1, 4], [3]]
    assert by_engine([]) == []


def test_the_key_is_the_engine_s_arguments_not_the_set():
    key = lambda *o: engine_key(make_cfg(*TINY, *o))  # noqa: E731
    assert key("prompts.name=sample") == key("prompts.name=letters")
    assert key("model.max_model_len=4096") != key("model.max_model_len=8192")
    assert key("sampling.temperature=0.5") == key()  # sampling is per request
    # every benchmark's set is imported under one root: a table over them shares one engine
    assert key("prompts=mmmu") == key("prompts=chartqa") != key("prompts=sample")
    assert key("+engine.extra.max_num_seqs=2").startswith("error: ")  # fails on its own


def test_outside_a_checkout_the_shipped_sets_share_a_media_root(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    from runner.plan.load import set_root

    monkeypatch.chdir(tmp_path)  # `prompts` names no folder here: the sets the runner ships
    cfg = make_cfg(*TINY)
    roots = {media_root(cfg, set_root(n, "prompts")) for n in ("sample", "letters")}
    assert len(roots) == 1, roots


def sweep(tmp_path: Path, *args: str) -> tuple[int, list[dict], str]:
    trace = tmp_path / "trace"
    trace.unlink(missing_ok=True)
    store = tmp_path / "store"
    p = runner("-m", *TINY, *AXES, f"store.root={store}", "sampling.max_tokens=4", *args,
               env=fake_env(trace=str(trace)), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    starts = [x for x in trace.read_text().splitlines() if x.startswith("start ")]
    rows = json.loads(max(store.glob(".sweeps/*/runs.json")).read_text())
    return len(starts), rows, " ".join((p.stdout + p.stderr).split())


@pytest.mark.process
def test_a_two_by_two_sweep_starts_two_engines_not_four(tmp_path: Path):
    n, rows, out = sweep(tmp_path / "grouped")
    assert n == 2, out[-3000:]
    # each point keeps the number (and folder) it has in the sweeper's order
    assert [r["num"] for r in rows] == [0, 1, 2, 3]
    assert [[o for o in r["overrides"] if o.split("=")[0] in ("prompts.name",
                                                              "model.max_model_len")]
            for r in rows] == [["prompts.name=sample", "model.max_model_len=4096"],
                               ["prompts.name=sample", "model.max_model_len=8192"],
                               ["prompts.name=letters", "model.max_model_len=4096"],
                               ["prompts.name=letters", "model.max_model_len=8192"]]
    assert all(r["status"] == "computed" for r in rows)
    assert [r["engine_starts"] for r in rows] == [1, 1, 0, 0]  # 0 and 1 open their groups
    assert "#0 : " in out and out.index("#2 : ") < out.index("#1 : ")
    assert "4 points, 2 engine starts at most" in out
    assert "engine starts: 2 (2 groups of equal engine arguments)" in out
    # Hydra's own order alternates the engines: a start at every point
    n, rows, out = sweep(tmp_path / "hydra", "hydra/launcher=basic")
    assert n == 4 and [r["engine_starts"] for r in rows] == [1, 1, 1, 1], out[-3000:]


@pytest.mark.process
def test_a_dry_run_says_how_many_engines_the_sweep_needs(tmp_path: Path):
    p = runner("-m", *TINY, *AXES, f"store.root={tmp_path}", "dry_run=true", env=fake_env())
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 0, out[-3000:]
    assert "4 points, 2 engine starts at most" in out
    assert "engine starts: none (a dry run); the sweep needs 2 (2 groups" in out
