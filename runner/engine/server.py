"""`python -m runner.serve`: vLLM's own OpenAI-compatible server (its `api_server` entry
point, in a child process) started from the run's model/ and engine/ configs, on loopback,
with its address and engine arguments in the store's state file (server_state.py) while it
is up. Ctrl-C (or SIGTERM) stops it the way vLLM expects and removes the state file.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from omegaconf import DictConfig, OmegaConf

from runner.console import console
from runner.engine.args import check_engine_args, engine_kwargs, explain_start_failure
from runner.engine.connect import healthy
from runner.engine.server_state import alive, read_state, serve_dir, state_path, write_state
from runner.engine.vllm_engine import count_start, import_vllm
from runner.errors import StartFailed, UserError

STOP_TIMEOUT_S = 120.0  # vLLM's engine core tears its workers down: slow on a loaded CPU


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def address(url: str | None) -> tuple[str, int]:
    """engine.url names where to listen; otherwise loopback on a free port."""
    if not url or url == "serve":
        return "127.0.0.1", free_port("127.0.0.1")
    u = urlparse(url)
    if u.scheme != "http" or not u.hostname or not u.port:
        raise UserError(f"engine.url={url} is not http://HOST:PORT; runner.serve listens on "
                        "plain HTTP (leave engine.url unset for a free loopback port).")
    return u.hostname, u.port


def batch_defaults(kw: dict[str, Any]) -> dict[str, Any]:
    """vLLM's offline-LLM batch sizes when the config leaves them to vLLM: its server's own
    defaults are smaller, and the same engine arguments should batch the same way."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.usage.usage_lib import UsageContext

    world = int(kw.get("tensor_parallel_size", 1)) * int(kw.get("pipeline_parallel_size", 1))
    tokens, seqs = EngineArgs.get_batch_defaults(world)
    out: dict[str, Any] = {}
    if kw.get("max_num_seqs") is None and UsageContext.LLM_CLASS in seqs:
        out["max_num_seqs"] = seqs[UsageContext.LLM_CLASS]
    if kw.get("max_num_batched_tokens") is None and UsageContext.LLM_CLASS in tokens:
        out["max_num_batched_tokens"] = tokens[UsageContext.LLM_CLASS]
    return out


def _die_with_parent() -> None:
    """In the child: SIGTERM when runner.serve dies, even by SIGKILL (Linux's prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def serve(cfg: DictConfig) -> int:
    """Start the server, keep it up until Ctrl-C/SIGTERM, stop it; the exit code."""
    from runner.engine.quant import check_model

    root = cfg.store.root
    old = read_state(root)
    if old and alive(old.get("pid")):
        raise UserError(f"A server already runs on store {root} ({old.get('url')}, pid "
                        f"{old.get('pid')}): use it (engine=server), or stop it (Ctrl-C in its "
                        f"terminal, or kill {old.get('runner_pid')}) first.")
    check_model(cfg.model)
    # A server outlives any one set: vLLM may read images from every set under prompts.root.
    kw = engine_kwargs(cfg, Path(cfg.prompts.root).resolve())
    host, port = address(cfg.engine.url)
    url = f"http://{host}:{port}"
    d = serve_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    args_file, log_path = d / "engine_args.yaml", d / "server.log"
    with _output_to(log_path):  # vLLM's (and torch's) import chatter: the log, not the console
        import_vllm()
        check_engine_args(kw)
        added = batch_defaults(kw) | {"generation_config": "vllm"}
    args_file.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in (kw | added).items()
                                         if v is not None}))
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--config",
           str(args_file), "--host", host, "--port", str(port),
           "--served-model-name", cfg.model.name]
    env = OmegaConf.to_container(cfg.engine.env, resolve=True)
    assert isinstance(env, dict)
    console.print(f"Starting vLLM's server for {cfg.model.name} (log: {log_path})…")
    t0 = time.perf_counter()
    count_start()
    with open(log_path, "ab") as log:
        log.write(f"\n=== runner.serve {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **{k: str(v) for k, v in env.items()}},
                                preexec_fn=_die_with_parent)
    # Both set explicitly: a shell's background job starts with SIGINT ignored.
    prev = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            _wait_ready(proc, url, log_path, kw["model"])
        except KeyboardInterrupt:
            _stop(proc)
            console.print("[yellow]Interrupted; the server is stopped.")
            return 130
        write_state(root, {"url": url, "pid": proc.pid, "runner_pid": os.getpid(),
                           "model": kw["model"], "served_model_name": cfg.model.name,
                           "engine_args": kw, "added": added, "env": env,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "log": str(log_path)})
        console.print(f"vLLM's server for {cfg.model.name} is ready in "
                      f"{time.perf_counter() - t0:.1f}s at {url} (state: {state_path(root)}); "
                      "run jobs with engine=server (same store.root); Ctrl-C stops it.",
                      highlight=False)
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            console.print("The server is stopped.")
            return 0
        console.print(f"[bold red]error:[/] vLLM's server exited by itself (code {code}); "
                      f"its log is {log_path}.")
        return 1
    finally:
        for sig, handler in prev.items():
            signal.signal(sig, handler)
        if (st := read_state(root)) and st.get("pid") == proc.pid:
            state_path(root).unlink(missing_ok=True)


@contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """fds 1 and 2 appended to `path` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _wait_ready(proc: subprocess.Popen, url: str, log_path: Path, model: str) -> None:
    """Until /health answers; a server that exits first is one sentence from its log."""
    while not healthy(url, 1.0):
        if proc.poll() is not None:
            text = log_path.read_text(errors="replace")[-60_000:]
            raise StartFailed(explain_start_failure(
                RuntimeError("the server failed to start"), text, model))
        time.sleep(0.2)  # polling the port: the signal is the server answering


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, as vLLM's server expects (it shuts its engine core down); SIGKILL to its whole
    process group if it does not exit in time."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of it left (its engine core)
    except ProcessLookupError:
        pass
    proc.wait()
