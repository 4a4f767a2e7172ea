"""A sweep point that fails mid-generation leaves no request in flight for the next point:
its outputs must never arrive under the next point's keys (the Nix promise: what is stored
under a hash is what that config computed). On the fake engine, in a real sweep process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import TINY, fake_env, output, run_dirs_of, spawn, wait_for

pytestmark = pytest.mark.process


def make_sets(root: Path) -> None:
    """Set `a`: two plain items and one whose RGBA image the plan converts into the store's
    cache (sent as a data: URL read when its request is queued). Set `b`: the two plain items
    again, byte for byte, so the same item keys under another run hash."""
    for name in ("a", "b"):
        d = root / name / "images"
        d.mkdir(parents=True)
        Image.new("RGB", (64, 48), (200, 30, 30)).save(d / "red.png")
        items = [{"id": "one", "text": "What colour is this?", "images": ["images/red.png"]},
                 {"id": "two", "text": "Describe it.", "images": ["images/red.png"]}]
        if name == "a":
            Image.new("RGBA", (64, 48), (0, 0, 255, 128)).save(d / "alpha.png")
            items.append({"id": "three", "text": "And this?", "images": ["images/alpha.png"]})
        (root / name / "set.yaml").write_text(json.dumps({"name": name, "items": items}))


def test_a_failed_point_leaves_no_request_for_the_next(tmp_path: Path):
    prompts, store = tmp_path / "prompts", tmp_path / "store"
    make_sets(prompts)
    hold, gate, trace = tmp_path / "hold", tmp_path / "gate", tmp_path / "trace"
    p = spawn("-m", *TINY, "prompts.name=a,b", f"prompts.root={prompts}", f"store.root={store}",
              "engine.max_num_seqs=3", "engine.max_in_flight=3",  # all 3 queued at once
              env=fake_env(hold_start=str(hold), gate_after=0, gate=str(gate), trace=str(trace)))
    # Point a is planned (its converted copy exists) while its engine's start is held: the copy
    # goes away, so queuing item `three` fails after `one` and `two` are in the engine.
    wait_for(p, lambda: "plan 3 items" in output(p), "point a's plan")
    (copy,) = [f for f in (store / ".cache").rglob("*") if f.is_file() and f.suffix == ".png"]
    copy.unlink()
    hold.touch()
    ins = lambda: [x for x in (trace.read_text() if trace.exists() else "").splitlines()  # noqa: E731
                   if x.startswith("in ")]
    # The engine holds every output until both points have sent their two requests.
    wait_for(p, lambda: len(ins()) == 4, "both points' requests in the engine")
    gate.touch()
    p.wait(timeout=300)
    log = output(p)

    lines = trace.read_text().splitlines()
    second = [n for n, x in enumerate(lines) if x.startswith("in ")][2]  # point b's first
    outs_b = [x[4:] for x in lines[second:] if x.startswith("out ")]
    ins_b = [x[3:] for x in lines[second:] if x.startswith("in ")]
    # Every output delivered while point b ran answers a request point b sent, once.
    assert sorted(outs_b) == sorted(ins_b), lines
    b = [d for d in run_dirs_of(store)
         if yaml.safe_load((d / "config.yaml").read_text())["prompts"]["name"] == "b"]
    assert len(b) == 1, log[-3000:]
    recs = [json.loads(x) for x in (b[0] / "results.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == ["one", "two"], recs  # no duplicate, none lost
    assert all(r.get("output") is not None for r in recs), recs
    manifest = json.loads((b[0] / "manifest.json").read_text())
    assert manifest["status"] == "complete", manifest
