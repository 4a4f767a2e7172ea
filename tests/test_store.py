"""The store on real files: round trip, torn lines, atomic manifests, the run lock."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.store.rundir import RunDir


def rec(i: int) -> dict:
    return {"id": f"i{i}", "key": f"k{i}", "status": "ok", "output": f"out {i}"}


def test_round_trip(tmp_path: Path):
    rd = RunDir(tmp_path, "abc")
    rd.path.mkdir()
    w = rd.writer(every=2, seconds=60)
    for i in range(5):
        w.write(rec(i))
    w.close()
    got = rd.read_results()
    assert list(got) == [f"k{i}" for i in range(5)] and got["k3"]["output"] == "out 3"
    rd.write_manifest({"status": "complete"})
    assert rd.manifest() == {"status": "complete"}
    assert not list(rd.path.glob(".*tmp"))  # atomic write left no temp file


def test_torn_last_line_is_dropped_and_repaired(tmp_path: Path):
    rd = RunDir(tmp_path, "abc")
    rd.path.mkdir()
    good = "".join(json.dumps(rec(i)) + "\n" for i in range(3))
    rd.results.write_text(good + '{"id": "i3", "key": "k3", "sta')
    assert list(rd.read_results()) == ["k0", "k1", "k2"]
    w = rd.writer(16, 2.0)  # opening for append repairs the tail first
    w.write(rec(3))
    w.close()
    assert rd.results.read_text() == good + json.dumps(rec(3)) + "\n"
    assert list(rd.read_results()) == ["k0", "k1", "k2", "k3"]


def test_duplicate_keys_keep_the_first(tmp_path: Path):
    rd = RunDir(tmp_path, "abc")
    rd.path.mkdir()
    rd.results.write_text(json.dumps(rec(1)) + "\n" + json.dumps(rec(1) | {"output": "x"}) + "\n")
    assert rd.read_results()["k1"]["output"] == "out 1"


HOLD = """
import sys
from runner.store.rundir import RunDir
with RunDir(sys.argv[1], "abc").lock(wait=False, on_wait=print):
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until killed
"""


def test_second_writer_is_refused_then_a_killed_holder_never_blocks(tmp_path: Path):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"pid {p.pid} on "):
            with RunDir(tmp_path, "abc").lock(wait=False, on_wait=print):
                pass
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    held = []  # wait=False: a lock still held would raise, not block
    with RunDir(tmp_path, "abc").lock(wait=False, on_wait=held.append):
        assert held == []
    holder = (tmp_path / ".locks/abc.lock").read_text()
    assert holder == f"pid {os.getpid()} on {socket.gethostname()}"


def test_read_jsonl_reads_whole_lines_in_one_call_and_skips_bad_ones(tmp_path: Path):
    """The one-call parse gives what a line-by-line parse gives: U+2028 inside a string is
    not a line break, a blank or unparseable line is skipped, a torn last line is ignored, and
    lines that only parse together (`[1` then `2]`) are two bad lines."""
    from runner.files import read_jsonl

    f = tmp_path / "r.jsonl"
    good = [{"k": "a\u2028b"}, {"k": 2}]
    f.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in good) + "\n\n")
    assert read_jsonl(f) == good
    f.write_text(json.dumps(good[0]) + "\n[1\n2]\n{\"torn\": \n" + json.dumps(good[1]) +
                 "\n{\"cut")
    assert read_jsonl(f) == good
    f.write_bytes(b'{"k": 1}\n{"k": "\xff"}\n{"k": 3}\n')  # bad UTF-8 on one line
    assert read_jsonl(f) == [{"k": 1}, {"k": 3}]
