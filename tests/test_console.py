"""The console of a computed run: engine output goes to <run>/engine.log, the screen shows the
plan, the engine start, progress and the summary; failures show the log's tail.

On the fake engine (a child process that writes to the same fds as vLLM's processes do). That
vLLM's own lines land in engine.log, and a real failing start, are checked on the real engine
in test_faults.py.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import struct
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import FAKE, ROOT, TINY, fake_env, runner
from runner.launch.sweep import _points, table

pytestmark = pytest.mark.process  # the runner's processes on the fake engine: full lane

MAX_LINES = 25  # the whole screen of a computed run


def in_pty(*args: str, timeout: float = 300, env: dict | None = None,
           ctrl_c_when: Callable[[], bool] | None = None,
           term_when: Callable[[], bool] | None = None,
           echo: list[bool] | None = None) -> tuple[int, str]:
    """`python -m runner ARGS` on a pseudo-terminal (100x40), on the fake engine unless `env`
    says otherwise: exit code and all it printed. Types Ctrl-C once `ctrl_c_when()` holds;
    sends SIGTERM once `term_when()` holds. `echo` gets whether the terminal echoes just
    before that SIGTERM (if one is sent) and at the end."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "runner", *args],
                  {**os.environ, **(env or FAKE)})
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    out, end = bytearray(), time.monotonic() + timeout
    while time.monotonic() < end:
        if ctrl_c_when is not None and ctrl_c_when():
            os.write(fd, b"\x03")  # the terminal's Ctrl-C
            ctrl_c_when = None
        if term_when is not None and term_when():
            if echo is not None:
                echo.append(bool(termios.tcgetattr(fd)[3] & termios.ECHO))
            os.kill(pid, signal.SIGTERM)
            term_when = None
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
    if echo is not None:
        echo.append(bool(termios.tcgetattr(fd)[3] & termios.ECHO))
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


def test_a_run_on_a_terminal_is_quiet_and_its_engine_log_has_the_engines_lines(tty_run):
    rc, out, store = tty_run
    assert rc == 0, out[-3000:]
    assert out.count("\n") <= MAX_LINES, out
    for noise in ("WARNING", "INFO", "Traceback", "exited unexpectedly", "leaked"):
        assert noise not in out
    for shown in ("plan 5 items", "Starting vLLM engine", "vLLM ready in", "complete",
                  "engine log"):  # the summary's row; its path may fold over lines
        assert shown in out
    (run,) = run_dirs(store)
    log = (run / "engine.log").read_text()
    assert log.count("\n===== ") == 1 and f"store.root={store}" in log  # the header
    assert "fake engine: pid" in log  # a child process's lines
    assert "fake engine: shut down" not in log  # at the command's end: killed, not waited for
    assert not list((store / ".logs").iterdir())  # the start log moved into the run


def test_a_cached_rerun_writes_nothing_to_the_engine_log(tty_run):
    rc, _, store = tty_run
    assert rc == 0
    (run,) = run_dirs(store)
    before = (run / "engine.log").read_bytes()
    rc, out = in_pty(*TINY, f"store.root={store}")
    assert rc == 0 and "cached" in out and out.count("\n") <= MAX_LINES
    assert (run / "engine.log").read_bytes() == before


def test_a_failing_engine_start_shows_the_log_tail_and_its_path(tmp_path: Path):
    # the engine process says its root cause in the log and exits; a real one: test_faults.py
    p = runner(*TINY, f"store.root={tmp_path}", env=fake_env(
        fail_start="No available memory for the cache blocks. Try increasing "
                   "`gpu_memory_utilization` when initializing the engine."))
    assert p.returncode == 2, p.stderr[-3000:]
    err = p.stderr
    before, tail = err.split("lines of the engine log")  # our sentence, then the log's tail
    before = " ".join(before.split())
    assert "error: Not enough memory for the KV cache (ValueError: No available memory" \
        in before and "Traceback" not in before
    (log,) = (tmp_path / ".logs").iterdir()  # no run folder: the start log is kept
    assert not run_dirs(tmp_path)
    assert f"engine log: {log}" in err
    assert "fake engine: pid" in log.read_text()  # the engine process's own lines
    assert "No available memory for the cache blocks" in tail
    assert err.count("\n") <= 40


def test_a_user_error_is_one_sentence_without_a_log(tmp_path: Path):
    p = runner(*TINY, f"store.root={tmp_path}", "model.build=null",
               f"model.path={tmp_path}/nowhere")
    assert p.returncode == 2
    assert "error:" in p.stderr and "engine log" not in p.stderr and "last 20" not in p.stderr
    assert not list((tmp_path / ".logs").glob("*"))


def test_log_engine_console_streams_the_engine_logs(tmp_path: Path):
    p = runner(*TINY, f"store.root={tmp_path}", "log.engine=console", "prompts.limit=1",
               env=FAKE)
    assert p.returncode == 0, p.stderr[-3000:]
    both = p.stdout + p.stderr
    assert "fake engine: pid" in both and "fake engine: shut down" not in both  # killed at the end
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


def test_ctrl_c_on_the_terminal_stops_the_engine_in_order(tmp_path: Path):
    """Ctrl-C typed on the terminal mid-generation (the engine holds at a gate that never
    opens, 20 items still to run): the run is interrupted (130) and the engine shuts down in
    order, visible with log.engine=console. The Ctrl-C reaches the runner only: the fake
    engine records every SIGINT it receives, and it received none."""
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
                     "engine.max_num_seqs=4", f"store.root={store}", "log.engine=console",
                     env=fake_env(gate_after=4, gate=str(tmp_path / "never"),
                                  sigints=str(tmp_path / "sigints")),
                     ctrl_c_when=lambda: stored() >= 4)
    assert rc == 130, out[-3000:]
    sigints = tmp_path / "sigints"  # created as the engine starts
    assert sigints.exists() and sigints.read_text() == "", "the Ctrl-C reached the engine"
    (m,) = [json.loads(f.read_text()) for f in store.glob("*/manifest.json")]
    assert m["status"] == "interrupted" and m["counts"]["stored"] == 4
    assert "fake engine: shut down" in out  # the engine was shut down, not killed
    assert "Traceback" not in out, out[-3000:]


def test_sigterm_while_the_engine_starts_leaves_the_terminal_echoing(tmp_path: Path):
    """SIGTERM while the engine starts (beside the plan; the fake's start is held): the run
    had taken the terminal over (no echo, Ctrl-C read by a thread; seen at the held start,
    before the SIGTERM), ends with 143 and gives the terminal back as it was (echo on)."""
    trace, echo = tmp_path / "trace", []
    rc, out = in_pty(*TINY, f"store.root={tmp_path / 'store'}",
                     env=fake_env(hold_start=str(tmp_path / "never"), trace=str(trace)),
                     term_when=lambda: trace.exists() and "start" in trace.read_text(),
                     echo=echo)
    assert rc == 143, out[-3000:]
    assert echo == [False, True], out[-3000:]  # off while the runner held it, then back on


VLLM_LIKE = """
import logging, sys
from pathlib import Path
from runner.console import logs
lg = logging.getLogger("enginelike")  # as vLLM configures its own: a handler on sys.stdout
lg.addHandler(logging.StreamHandler(sys.stdout)); lg.setLevel(logging.INFO); lg.propagate = False
with logs.engine_log(Path(sys.argv[1]), "0123456789abcdef", "file"):
    if sys.argv[2] == "pumped":
        logs.loggers_to_pump("enginelike")
    lg.info("inside the run")
lg.info("after the run: a thread the stopped start left")
print("the runner's own line")
"""


@pytest.mark.parametrize("pumped", [True, False])
def test_engine_lines_logged_after_a_stopped_start_stay_off_the_console(tmp_path: Path,
                                                                         pumped: bool):
    """vLLM's multi-modal warmup runs in a thread that outlives a start the plan stopped, and
    logs after fd 1/2 point back at the terminal (seen: `Multi-modal warmup completed` on
    stdout). A logger handed to loggers_to_pump keeps off the console after the run's scope
    too; without it (the control) the line shows. The mechanism, on a logger configured as
    vLLM's; the real call on vLLM's own logging: test_real_engine.py's
    test_vllms_own_lines_after_the_run_stay_off_the_console."""
    import subprocess

    p = subprocess.run([sys.executable, "-c", VLLM_LIKE, str(tmp_path),
                        "pumped" if pumped else "plain"], cwd=ROOT, text=True,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "inside the run" not in p.stdout and "the runner's own line" in p.stdout
    assert ("after the run" in p.stdout) is not pumped, p.stdout
