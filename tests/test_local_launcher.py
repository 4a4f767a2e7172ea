"""`hydra/launcher=local` never runs more jobs (engines) at once than the node has GPU slots:
4 shards on a node listing 2 GPUs run in 2 waves, each job on its own GPU. Fake engines held at
a gate until two jobs hold their locks, so the first wave is known to overlap; the timeline is
each point's recorded start and end (runs.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY, fake_env, output, spawn, wait_for

pytestmark = pytest.mark.process


def most_at_once(rs: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in rs] + [(r["end"], -1) for r in rs])
    now = most = 0
    for _, d in events:
        now += d
        most = max(most, now)
    return most


def test_four_shards_on_two_gpus_run_two_at_a_time(tmp_path: Path):
    gate = tmp_path / "gate"
    p = spawn("-m", "hydra/launcher=local", *TINY, f"store.root={tmp_path}",
              "prompts.name=letters", "sampling.max_tokens=4", "shard.count=4",
              "shard.index=0,1,2,3",
              env={"CUDA_VISIBLE_DEVICES": "0,1", **fake_env(gate_after=0, gate=str(gate))})
    held = lambda: [f for f in tmp_path.glob(".locks/*-of-4.lock") if f.read_text()]  # noqa: E731
    wait_for(p, lambda: len(held()) >= 2, "two shards to take their locks", timeout=300)
    gate.touch()
    assert p.wait(timeout=300) == 0, output(p)[-4000:]
    rs = json.loads(max(tmp_path.glob(".sweeps/*/runs.json")).read_text())
    assert [r["status"] for r in rs] == ["computed"] * 4
    assert most_at_once(rs) == 2, [(r["num"], r["start"], r["end"]) for r in rs]
    (d,) = {Path(r["folder"]) for r in rs}
    m = json.loads((d / "manifest.json").read_text())
    assert m["status"] == "complete"
    assert [m["shards"][f"{i}/4"]["devices"] for i in range(4)] == ["0", "1", "0", "1"]
