"""Shared fixtures.

Two engines serve the tests (docs/development.md, "Which tests use which engine"):
- the fake engine (`fake_env`: RUNNER_ENGINE=fake), a child process with injectable faults,
  for the runner's own process behaviour: resume, locks, shards, sweeps, the console,
  restarts, Ctrl-C;
- the real vLLM engine (marker `engine`), for what is about vLLM: one session-scoped engine in
  this process (`real`) serves every content check; a few tests start their own for a real
  kill, a real poison item, a real start failure and the W4A16 twin. The suite's last line
  counts the real starts (RUNNER_ENGINE_STARTS_LOG).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from runner.config import register

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
TINY = ["model=pixtral_tiny", "engine=cpu"]
# The engine arguments of the session's real engine: the structured-outputs route (xgrammar,
# no free whitespace), at most 2 images per prompt (the hostile set's too_many_images) and
# vLLM's stats on (off by default): the live token counters. Every other real engine runs
# with the default.
ROUTE = "+engine.extra.structured_outputs_config={backend:xgrammar,disable_any_whitespace:true}"
REAL = [*TINY, ROUTE, "model.limit_mm_per_prompt.image=2",
        "+engine.extra.disable_log_stats=false"]

register()
STARTS = pytest.StashKey[Path]()


DOCS_COUNTS = pytest.StashKey[Path]()  # tests/test_docs.py writes what it checked here


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("RUNNER_ENGINE_STARTS_LOG"):  # `make test` sets it and prints it
        f = tempfile.NamedTemporaryFile(prefix="engine-starts-", delete=False)
        os.environ["RUNNER_ENGINE_STARTS_LOG"] = f.name
        config.stash[STARTS] = Path(f.name)
    if not os.environ.get("RUNNER_DOCS_COUNTS"):  # set before the xdist workers start
        f = tempfile.NamedTemporaryFile(prefix="docs-counts-", delete=False)
        os.environ["RUNNER_DOCS_COUNTS"] = f.name
        config.stash[DOCS_COUNTS] = Path(f.name)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if (f := config.stash.get(DOCS_COUNTS, None)) is not None and f.exists():
        for line in f.read_text().splitlines():
            terminalreporter.write_line(line)
    if (f := config.stash.get(STARTS, None)) is not None:
        n = len(f.read_text().splitlines()) if f.exists() else 0
        terminalreporter.write_line(f"real vLLM engine starts: {n}")


def fake_env(**faults: Any) -> dict[str, str]:
    """The environment that gives a runner the fake engine, with these faults
    (runner/engine/fake.py)."""
    return {"RUNNER_ENGINE": "fake", "RUNNER_FAKE_ENGINE": json.dumps(faults)}


FAKE = fake_env()  # the fake engine, no faults


def run_dirs_of(store: Path) -> list[Path]:
    """The run folders in a store (not .locks, .logs, .sweeps)."""
    return sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))


def engine_procs(pid: int) -> list[int]:
    """Descendants of `pid` that are engines: vLLM's (titled VLLM::EngineCore) or fake ones."""
    parent, cmd = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd[int(d.name)] = (d / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                pass

    def descends(q: int) -> bool:
        while q in parent and q > 1:
            q = parent[q]
            if q == pid:
                return True
        return False

    return [q for q, c in cmd.items() if (c.startswith(b"VLLM::EngineCore")
                                          or b"runner.engine.fake" in c) and descends(q)]


MARK = "RUNNER_TEST_MARK"  # in the environment of a watched runner and all it spawns


def marked(mark: str) -> list[int]:
    """Live processes whose environment carries MARK=mark (a zombie's environment is empty:
    it holds nothing)."""
    needle = f"{MARK}={mark}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "environ").read_bytes().split(b"\0"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def mapped_shm(pids: list[int]) -> set[str]:
    """The /dev/shm segments these processes map (not those already unlinked)."""
    names = set()
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            path = (line.split(None, 5)[5:] or [""])[0]
            if path.startswith("/dev/shm/") and not path.endswith("(deleted)"):
                names.add(path.removeprefix("/dev/shm/"))
    return names


def run_watched(*args: str, env: dict | None = None,
                timeout: float = 600) -> tuple[subprocess.CompletedProcess, SimpleNamespace]:
    """`python -m runner ARGS` like `runner`, its processes watched while it runs: every pid
    that carried its mark, and the shared memory segments they mapped (`.pids`, `.shm`).
    `.mark` finds what is still alive afterwards (`left_behind`)."""
    mark = os.urandom(8).hex()
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    p = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, text=True,
                         stdout=out, stderr=err,
                         env={**os.environ, **(env or {}), MARK: mark})
    seen = SimpleNamespace(mark=mark, pids=set(), shm=set())
    end = time.monotonic() + timeout
    while p.poll() is None:
        assert time.monotonic() < end, "the runner did not finish in time"
        pids = marked(mark)
        seen.pids.update(pids)
        seen.shm |= mapped_shm(pids)
        time.sleep(0.1)  # an observer's poll, not an order between processes
    out.seek(0)
    err.seek(0)
    return subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read()), seen


def left_behind(seen: SimpleNamespace, store: Path) -> list[str]:
    """What a finished runner left: processes of its tree still alive, shared memory they
    mapped still there, temp files and held locks in the store, a results or scores line
    cut short. [] when nothing."""
    import fcntl

    left = [f"process {pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:80]!r}"
            for pid in marked(seen.mark)]
    left += [f"/dev/shm/{n}" for n in sorted(seen.shm) if Path("/dev/shm", n).exists()]
    left += [f"temp file {f}" for f in store.rglob("*.tmp")]
    for lock in (store / ".locks").glob("*.lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            left.append(f"lock held: {lock}")
        finally:
            os.close(fd)
    for f in [*store.glob("*/results*.jsonl"), *store.glob("*/scores.jsonl")]:
        text = f.read_text()
        if text and not text.endswith("\n"):
            left.append(f"a line cut short: {f}")
        for line in text.splitlines():
            try:
                json.loads(line)
            except ValueError:
                left.append(f"a line that does not parse in {f}: {line[:80]}")
    return left


def make_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def runner(*args: str, cwd: Path = ROOT, env: dict | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m runner ARGS` in a real process, output captured."""
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m runner ARGS` in its own process group, not waited for; its output goes to a
    file (`output(p)`), not a pipe that could fill up while nobody reads it."""
    log = tempfile.TemporaryFile("w+")
    p = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, text=True,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, **(env or {})})
    p.log = log  # type: ignore[attr-defined]
    return p


def output(p: subprocess.Popen) -> str:
    p.log.seek(0)  # type: ignore[attr-defined]
    return p.log.read()  # type: ignore[attr-defined]


def wait_for(p: subprocess.Popen, done: Callable[[], bool], what: str,
             timeout: float = 600) -> None:
    """Poll a condition on files the runner writes, failing at once if the runner exits."""
    end = time.monotonic() + timeout
    while not done():
        assert p.poll() is None, output(p)[-3000:]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """One real vLLM engine for the session, in this process. `real.run(*overrides)` runs a
    job (REAL plus the overrides) and returns (run folder, summary, console text). Every set
    lives under one prompts root, so every run shares the engine."""
    from hostile import hostile_set

    from runner.console import console
    from runner.engine import SLOT
    from runner.job.recipe import Job

    base = tmp_path_factory.mktemp("real")
    prompts, store = base / "prompts", base / "store"
    shutil.copytree(ROOT / "prompts", prompts, ignore=shutil.ignore_patterns(".cache"))
    hostile_set(prompts / "hostile")

    def run(*overrides: str) -> tuple[Path, Any, str]:
        args = [*REAL, f"prompts.root={prompts}", f"store.root={store}", *overrides]
        with console.capture() as cap:
            s = Job(make_cfg(*args), args).run()
        assert s.status in ("complete", "cached"), (s, cap.get())
        return Path(s.folder), s, cap.get()

    try:
        yield SimpleNamespace(run=run, prompts=prompts, store=store, slot=SLOT)
    finally:
        SLOT.shutdown()


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    """The bundled tiny Pixtral in data/, built if missing: exact token plans read its
    tokenizer, and a fresh clone's fast lane runs before any engine test has built it."""
    from runner.bundled import tiny

    return tiny.build(ROOT / "data" / "pixtral-tiny")


@pytest.fixture
def standins(tmp_path: Path) -> Iterator[Callable[..., tuple[str, int]]]:
    """start(config) -> (url, pid) of a stand-in server (tests/standin_server.py) with this
    config; all killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(config: dict) -> tuple[str, int]:
        port_file = tmp_path / f"port{len(procs)}"
        env = {**os.environ, "STANDIN": json.dumps(config)}
        p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "standin_server.py"),
                              str(port_file)], env=env)
        procs.append(p)
        end = time.monotonic() + 60
        while not port_file.exists():  # written once it listens
            assert p.poll() is None and time.monotonic() < end, "the stand-in did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port_file.read_text()}", p.pid

    yield start
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def standin(standins: Callable[..., tuple[str, int]],
            tiny_weights: Path) -> Callable[..., tuple[str, int]]:
    """start(**faults) -> (url, pid) of a stand-in vLLM server for the tiny model."""
    model = str((ROOT / "data" / "pixtral-tiny").resolve())
    return lambda **cfg: standins({"name": "pixtral-tiny", "root": model,
                                   "max_model_len": 4096} | cfg)


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fake engine for jobs run in this process, shut down after the test."""
    from runner.engine import SLOT

    monkeypatch.setenv("RUNNER_ENGINE", "fake")
    try:
        yield
    finally:
        SLOT.shutdown()
