"""A full disk is a user error: one sentence naming the store, exit 3, nothing torn, and the
same command completes once space is freed. The store is a real 1 MiB tmpfs, in a mount
namespace of its own (`unshare -m`: gone with the test), filled by the run itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE, ROOT, TINY

pytestmark = pytest.mark.process

SCRIPT = """
set -u
mount -t tmpfs -o size=1m tmpfs "$STORE"
"$PY" -m runner "$@" store.root="$STORE" > "$OUT/first.txt" 2>&1; echo $? > "$OUT/first.rc"
cp -a "$STORE" "$OUT/after_fail"
mount -o remount,size=64m "$STORE"          # space freed
"$PY" -m runner "$@" store.root="$STORE" > "$OUT/second.txt" 2>&1; echo $? > "$OUT/second.rc"
cp -a "$STORE" "$OUT/final"
"""


def records(run: Path) -> list[dict]:
    """The complete lines of a run's results (a line cut short by the full disk has no
    newline: the next open drops it, as after a kill)."""
    text = "".join(f.read_text() for f in run.glob("results*.jsonl"))
    return [json.loads(x) for x in text[:text.rfind("\n") + 1].splitlines()]


def test_a_full_disk_is_one_sentence_and_the_rerun_completes(tmp_path: Path):
    prompts, store, out = tmp_path / "prompts", tmp_path / "store", tmp_path / "out"
    (prompts / "many").mkdir(parents=True)
    items = [{"id": f"q{i:04d}", "text": f"Question {i}: say something long."}
             for i in range(1000)]
    (prompts / "many" / "set.yaml").write_text(json.dumps({"items": items}))
    store.mkdir()
    out.mkdir()
    args = [*TINY, "prompts.name=many", f"prompts.root={prompts}", "sampling.max_tokens=200",
            "sampling.ignore_eos=true", "engine.max_num_seqs=128"]
    p = subprocess.run(["unshare", "-m", "bash", "-c", SCRIPT, "script", *args], cwd=ROOT,
                       env={**os.environ, **FAKE, "PY": sys.executable, "STORE": str(store),
                            "OUT": str(out)}, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    first = (out / "first.txt").read_text()
    assert (out / "first.rc").read_text().strip() == "3", first[-3000:]
    said = " ".join(first.split())
    assert f"No space left on the disk of the store {store}" in said, first[-3000:]
    assert "Traceback" not in first

    runs = lambda s: [d for d in s.iterdir() if d.is_dir() and d.name[0] != "."]  # noqa: E731
    (failed,) = runs(out / "after_fail")
    kept = records(failed)  # every complete line parses: nothing torn
    assert len({r["key"] for r in kept}) == len(kept) < 1000

    second = (out / "second.txt").read_text()
    assert (out / "second.rc").read_text().strip() == "0", second[-3000:]
    (run,) = runs(out / "final")
    assert run.name == failed.name  # the same command, the same run
    done = records(run)
    assert sorted(r["id"] for r in done) == [f"q{i:04d}" for i in range(1000)]
    assert all(r.get("output") for r in done)
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
