"""The console of a computed run (issue 13): engine output goes to <run>/engine.log, the screen
shows the plan, the engine start, progress and the summary; failures show the log's tail.

Engine starts: one run under a pseudo-terminal, one failing start, one run with
log.engine=console. Outputs are never compared as text (CPU decoding is not batch-invariant).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import struct
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ROOT, TINY, runner
from runner.sweep import _points, table

MAX_LINES = 25  # the whole screen of a computed run


def in_pty(*args: str, timeout: float = 900,
           ctrl_c_when: Callable[[], bool] | None = None) -> tuple[int, str]:
    """`python -m runner ARGS` on a pseudo-terminal (100x40): exit code and all it printed.
    Types Ctrl-C once `ctrl_c_when()` holds."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "runner", *args])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    out, end = bytearray(), time.monotonic() + timeout
    while time.monotonic() < end:
        if ctrl_c_when is not None and ctrl_c_when():
            os.write(fd, b"\x03")  # the terminal's Ctrl-C
            ctrl_c_when = None
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    else:
        os.kill(pid, 9)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))  # no styles
    return os.waitstatus_to_exitcode(status), text


def run_dirs(store: Path) -> list[Path]:
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.fixture(scope="module")
def tty_run(tmp_path_factory) -> tuple[int, str, Path]:
    store = tmp_path_factory.mktemp("tty")
    rc, out = in_pty(*TINY, f"store.root={store}")
    return rc, out, store


@pytest.mark.engine
def test_a_run_on_a_terminal_is_quiet_and_its_engine_log_has_vllms_lines(tty_run):
    rc, out, store = tty_run
    assert rc == 0, out[-3000:]
    assert out.count("\n") <= MAX_LINES, out
    for noise in ("WARNING", "INFO", "Traceback", "exited unexpectedly", "leaked"):
        assert noise not in out
    for shown in ("plan 5 items", "Starting vLLM engine", "vLLM ready in", "complete",
                  "engine.log"):
        assert shown in out
    (run,) = run_dirs(store)
    log = (run / "engine.log").read_text()
    assert log.count("\n===== ") == 1 and f"store.root={store}" in log  # the header
    assert "(EngineCore" in log and "Initializing a V1 LLM engine" in log  # a child process
    assert "Cutting non special vocabulary" in log  # this process's own chatter
    # shut down in vLLM's order: the client completes, nothing is killed or reported dead
    assert "[shutdown] MPClient: complete" in log
    assert "exited unexpectedly" not in log and "force killing" not in log
    assert not list((store / ".logs").iterdir())  # the start log moved into the run


@pytest.mark.engine
def test_a_cached_rerun_writes_nothing_to_the_engine_log(tty_run):
    rc, _, store = tty_run
    assert rc == 0
    (run,) = run_dirs(store)
    before = (run / "engine.log").read_bytes()
    rc, out = in_pty(*TINY, f"store.root={store}")
    assert rc == 0 and "cached" in out and out.count("\n") <= MAX_LINES
    assert (run / "engine.log").read_bytes() == before


@pytest.mark.engine
def test_a_failing_engine_start_shows_the_log_tail_and_its_path(tmp_path: Path):
    # vLLM refuses a 1-byte KV cache in the engine-core process, after loading the model
    p = runner(*TINY, f"store.root={tmp_path}", "engine.kv_cache_memory_bytes=1", timeout=900)
    assert p.returncode == 2, p.stderr[-3000:]
    err = p.stderr
    before = " ".join(err.split("last 20 lines of")[0].split())  # our sentence, then the tail
    assert "error: Not enough memory for the KV cache (" in before and "Traceback" not in before
    assert "last 20 lines of" in err
    (log,) = (tmp_path / ".logs").iterdir()  # no run folder: the start log is kept
    assert not run_dirs(tmp_path)
    assert f"engine log: {log}" in err
    assert "(EngineCore" in log.read_text()  # the engine core's own lines
    assert "No available memory for the cache blocks" in err  # its root cause, in the tail
    assert err.count("\n") <= 40


def test_a_user_error_is_one_sentence_without_a_log(tmp_path: Path):
    p = runner(*TINY, f"store.root={tmp_path}", "model.build=null",
               f"model.path={tmp_path}/nowhere")
    assert p.returncode == 2
    assert "error:" in p.stderr and "engine log" not in p.stderr and "last 20" not in p.stderr
    assert not list((tmp_path / ".logs").glob("*"))


@pytest.mark.engine
def test_log_engine_console_streams_the_engine_logs(tmp_path: Path):
    p = runner(*TINY, f"store.root={tmp_path}", "log.engine=console", "prompts.limit=1",
               timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    both = p.stdout + p.stderr
    assert "(EngineCore" in both and "Initializing a V1 LLM engine" in both
    # the clean exit, visible here: vLLM's shutdown order, nothing killed, nothing leaked
    assert "[shutdown] MPClient: complete" in both
    for bad in ("exited unexpectedly", "force killing", "leaked shared_memory"):
        assert bad not in both
    (run,) = run_dirs(tmp_path)
    assert not (run / "engine.log").exists()


def test_log_engine_must_be_file_or_console(tmp_path: Path):
    p = runner(*TINY, f"store.root={tmp_path}", "log.engine=screen")
    assert p.returncode != 0 and "log.engine" in p.stderr


def test_the_sweep_table_shows_values_at_80_columns(tmp_path: Path):
    from rich.console import Console

    ov = [[*TINY, f"sampling.temperature={t}", f"sampling.seed={s}", f"store.root={tmp_path}"]
          for t, s in ((0.0, 1), (0.7, 1), (0.7, 2))]
    points, common = _points(ov)
    assert points == ["temperature=0.0 seed=1", "temperature=0.7 seed=1",
                      "temperature=0.7 seed=2"]
    assert common == [*TINY, f"store.root={tmp_path}"]
    rows = [{"num": i, "overrides": o, "hash": f"{i:016x}", "status": "computed", "items": 5,
             "tokens_per_s": 95.2, "metrics": {"accuracy": 1 / 3, "scored": 3, "by_tag": {}}}
            for i, o in enumerate(ov)]
    c = Console(width=80, record=True, file=open(os.devnull, "w"))
    c.print(table(rows, tmp_path / "sweep"))
    text = c.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    for p in points:
        assert p in text
    assert text.count(" 0.333 ") == 3 and "accuracy" in text and "by_tag" not in text
    assert "0000000000000002" in text


@pytest.mark.engine
def test_ctrl_c_on_the_terminal_stops_the_engine_in_order(tmp_path: Path):
    """Ctrl-C typed on the terminal mid-generation: the run is interrupted (130), and the engine
    shuts down in vLLM's order, visible with log.engine=console: no traceback, no core reported
    dead, no leaked shared memory."""
    d = tmp_path / "prompts" / "long"
    shutil.copytree(ROOT / "prompts/sample/images", d / "images")
    imgs = sorted(p.name for p in (d / "images").iterdir())
    items = [{"id": f"q{i:02d}", "text": f"Question {i}: what do you see?",
              "images": [f"images/{imgs[i % len(imgs)]}"] if i % 2 else []} for i in range(24)]
    (d / "set.yaml").write_text(json.dumps({"items": items}))
    store = tmp_path / "store"

    def stored() -> int:
        f = list(store.glob("*/results.jsonl"))
        return len(f[0].read_text().splitlines()) if f else 0

    rc, out = in_pty(*TINY, "prompts.name=long", f"prompts.root={tmp_path / 'prompts'}",
                     "engine.max_num_seqs=4", "sampling.max_tokens=256",
                     "sampling.ignore_eos=true", f"store.root={store}", "log.engine=console",
                     ctrl_c_when=lambda: stored() >= 4)
    assert rc == 130, out[-3000:]
    (m,) = [json.loads(f.read_text()) for f in store.glob("*/manifest.json")]
    assert m["status"] == "interrupted" and 4 <= m["counts"]["stored"] < 24
    assert "[shutdown] MPClient: complete" in out
    for bad in ("Traceback", "exited unexpectedly", "force killing", "leaked shared_memory"):
        assert bad not in out, out[-3000:]
