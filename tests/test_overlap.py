"""The engine starts while the set is planned (on the fake engine): a planning error stops the
start at once, with the planner's one sentence; a good plan runs on the engine that started
beside it."""

from __future__ import annotations

import http.server
import io
import json
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY, fake_env, output, run_dirs_of, runner, spawn, wait_for

pytestmark = pytest.mark.process  # the runner's processes on the fake engine: full lane


def stream_set(root: Path, n: int) -> Path:
    d = root / "s"
    d.mkdir(parents=True)
    lines = [json.dumps({"id": f"i{i}", "text": f"Item {i}."}) for i in range(n)]
    (d / "set.jsonl").write_text("\n".join(lines) + "\n")
    return d / "set.jsonl"


def started_pids(trace: Path) -> list[int]:
    return [int(x.split()[1]) for x in trace.read_text().splitlines() if x.startswith("start")]


class _Held(http.server.BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.release.wait(120)
        self.send_error(404)

    def log_message(self, *a: object) -> None:
        pass


def test_a_planning_error_stops_the_engine_start_at_once(tmp_path: Path):
    """The plan reaches its error (a duplicate id, after an image it must download) only once
    the test lets the download answer, which it does once the engine is starting; the engine's
    start never finishes on its own (it holds until a file that never comes). So the run can
    only end because the plan's error stopped the start."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Held)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    d = tmp_path / "s"
    d.mkdir()
    url = f"http://127.0.0.1:{srv.server_address[1]}/a.png"
    (d / "set.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"id": "a", "text": "x", "images": [url]}, {"id": "a", "text": "again"}]) + "\n")
    trace = tmp_path / "trace"
    p = spawn(*TINY, f"prompts.name={d / 'set.jsonl'}", f"store.root={tmp_path / 'store'}",
              "prompts.allow_remote=true",
              env=fake_env(trace=str(trace), hold_start=str(tmp_path / "never")))
    try:
        wait_for(p, lambda: trace.exists() and bool(started_pids(trace)), "the engine to start")
        _Held.release.set()
        rc = p.wait(timeout=120)
    finally:
        _Held.release.set()
        srv.shutdown()
    out = " ".join(output(p).split())
    assert rc == 2, out[-3000:]
    assert "duplicate item id 'a'" in out and "Traceback" not in out
    (pid,) = started_pids(trace)
    assert not Path(f"/proc/{pid}").exists()  # the engine was killed, not left behind
    assert not [x for x in (tmp_path / "store").glob("*") if not x.name.startswith(".")]


class _Png(http.server.BaseHTTPRequestHandler):
    """Serves one PNG, but only once the test releases it."""
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.release.wait(120)
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), "red").save(buf, "PNG")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(buf.getvalue())))
        self.end_headers()
        self.wfile.write(buf.getvalue())

    def log_message(self, *a: object) -> None:
        pass


def test_a_good_plan_runs_on_the_engine_started_beside_it(tmp_path: Path):
    """The plan cannot finish before the engine has started: its first item's image downloads
    only once the trace shows the engine's start. So a run that completes started the engine
    beside the plan (one that planned first would wait for ever)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Png)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    f = stream_set(tmp_path, 50)
    url = f"http://127.0.0.1:{srv.server_address[1]}/a.png"
    lines = f.read_text().splitlines()
    f.write_text("\n".join([json.dumps({"id": "i0", "text": "Item 0.", "images": [url]}),
                            *lines[1:]]) + "\n")
    trace, store = tmp_path / "trace", tmp_path / "store"
    q = spawn(*TINY, f"prompts.name={f}", f"store.root={store}", "prompts.allow_remote=true",
              env=fake_env(trace=str(trace)))
    try:
        wait_for(q, lambda: trace.exists() and bool(started_pids(trace)), "the engine to start")
        assert not list(store.glob("*/results.jsonl"))  # nothing ran before the plan ended
        _Png.release.set()
        rc = q.wait(timeout=120)
    finally:
        _Png.release.set()
        srv.shutdown()
    out = output(q)
    assert rc == 0, out[-3000:]
    assert len(started_pids(trace)) == 1 and "engine reused" not in out
    (run,) = run_dirs_of(store)
    m = json.loads((run / "manifest.json").read_text())
    assert m["counts"]["stored"] == 50 and m["timings"]["engine_start_s"] > 0
    assert m["engine"]["reused"] is False
    # a rerun of the finished run plans first, and starts nothing
    p = runner(*TINY, f"prompts.name={f}", f"store.root={store}", "prompts.allow_remote=true",
               env=fake_env(trace=str(trace)))
    assert p.returncode == 0 and "50 cached" in p.stderr and len(started_pids(trace)) == 1
    assert os.path.exists(trace)
