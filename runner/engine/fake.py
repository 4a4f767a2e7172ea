"""A fake engine for the runner's own process tests: the Engine interface, served by a child
process (`python -m runner.engine.fake`), so SIGKILL, stalls and deaths are real process
events. No vLLM, no model: a start costs a fraction of a second.

Chosen with the environment variable RUNNER_ENGINE=fake (docs/development.md); its behaviour
comes from RUNNER_FAKE_ENGINE, a JSON object:
  delay_s      seconds per decoding step (default 0.002)
  die_after    after this many results, the process kills itself with SIGKILL
  poison       a request whose text holds this marker makes the process exit (code 66)
               when it joins the batch, as a real poison item does
  stall_after  after this many results, the process stops answering (a hung engine)
  hang         a request whose text holds this marker makes the process stop answering
               when it joins the batch (an item that stalls the engine)
  gate_after, gate   after this many results (0: before the first), wait until the file
               `gate` exists
  deaths       the faults above apply to the first `deaths` engine processes only
               (counted in the folder `state`); default: every process
  fail_start   the start fails with this message (as vLLM's root cause line)
  trace        a file: "start <pid>", then a line per request received ("in <key>") and
               result sent ("out <key>")
  hold_start   the start does not finish until this file exists
  watchdog_off the engine reports its watchdog off for this reason
  sigints      a file: a line "SIGINT" per SIGINT the process receives (it ignores them
               either way: the runner shuts it down in order)
Outputs are deterministic: words drawn from a hash of the prompt, the seed, the temperature
and the sample's index; `max_tokens`, `ignore_eos`, `n` and a `choice` constraint are honored.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.engine.api import Event, Finished, Refused, Sample, Tokens
from runner.engine.watchdog import exit_text
from runner.errors import EngineDied

WORDS = ("the", "chart", "shows", "a", "bar", "of", "blue", "total", "receipt", "is", "red",
         "square", "circle", "left", "right", "value", "seven", "table", "row", "answer")


def options() -> dict[str, Any]:
    return json.loads(os.environ.get("RUNNER_FAKE_ENGINE") or "{}")


class FakeEngine:
    kind = "fake"
    steps = False

    def __init__(self, kw: dict[str, Any]):
        self.max_num_seqs = int(kw.get("max_num_seqs") or 4)
        off = options().get("watchdog_off")  # as when vLLM's internals are not found
        self.watchdog = f"off: {off}" if off else "on"
        self.max_gap_s = 0.0
        self.proc = subprocess.Popen([sys.executable, "-m", "runner.engine.fake",
                                      str(self.max_num_seqs)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        self._buf = b""
        self._keys: dict[str, None] = {}  # in flight, in submit order
        self.reason: str | None = None
        if self._line(None) is None:
            self.proc.wait()
            raise RuntimeError("Engine core initialization failed. See root cause above.")

    def _line(self, timeout: float | None) -> dict[str, Any] | None:
        """The child's next message; None at EOF; {} when `timeout` passed first."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self._buf:
            if not select.select([fd], [], [], timeout)[0]:
                return {}
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def in_flight(self) -> int:
        return len(self._keys)

    def submit(self, key: str, messages: list[dict[str, Any]],
               sampling: dict[str, Any]) -> None:
        if int(sampling.get("n") or 1) < 1:
            raise Refused("sampling: ValueError: n must be at least 1", "sampling")
        parts = [p for m in messages for p in (m["content"] if isinstance(m["content"], list)
                                               else [{"type": "text", "text": m["content"]}])]
        text = " ".join(p.get("text", "") for p in parts)
        images = sum(p["type"] != "text" for p in parts)
        try:
            self.proc.stdin.write(json.dumps({"key": key, "text": text, "images": images,  # type: ignore[union-attr]
                                              "sampling": sampling}).encode() + b"\n")
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except BrokenPipeError:  # dead: events() reads what it finished first, then says so
            pass
        self._keys[key] = None

    def events(self, stall_timeout_s: float | None = None) -> Iterator[Event]:
        last = time.monotonic()
        while self._keys:
            msg = self._line(stall_timeout_s or None)
            now = time.monotonic()
            if msg == {}:
                self.kill()
                self.reason = (f"no progress for {now - last:.0f} s "
                               f"(engine.stall_timeout_s={stall_timeout_s:g})")
                raise EngineDied(self.reason, list(self._keys))
            if msg is None:
                raise EngineDied(self._dead(), list(self._keys))
            self.max_gap_s, last = max(self.max_gap_s, now - last), now
            if "tokens" in msg:
                yield Tokens(*msg["tokens"])
            else:
                del self._keys[msg["key"]]
                yield Finished(msg["key"], msg["prompt_tokens"],
                               [Sample(*s) for s in msg["samples"]])

    def _dead(self) -> str:
        self.proc.wait()
        self.reason = self.reason or (f"the engine process (fake, pid {self.proc.pid}) "
                                      f"{exit_text(self.proc.returncode)}")
        return self.reason

    def why_dead(self) -> str | None:
        return self.reason or (self._dead() if self.proc.poll() is not None else None)

    def kill(self) -> None:
        self.proc.kill()

    def shutdown(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def drop(self) -> None:
        """At the end of the command: killed and reaped, as vLLM's processes are."""
        if self.in_flight():
            self.shutdown()
            return
        self.proc.kill()
        self.proc.wait()

    def describe(self) -> dict[str, Any]:
        return {"weight_bits": None, "group_size": None, "format": None, "method": None,
                "checkpoint_method": None, "kernel": "fake", "scheme": None}


# --- the child process ----------------------------------------------------------------------

def _words(seed: str, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        seed = hashlib.sha256(seed.encode()).hexdigest()
        out += [WORDS[int(seed[i:i + 2], 16) % len(WORDS)] for i in range(0, 64, 2)]
    return out[:n]


class _Request:
    def __init__(self, msg: dict[str, Any]):
        self.key, self.text, s = msg["key"], msg["text"], msg["sampling"]
        self.prompt_tokens = len(msg["text"].split()) + 8 + 64 * msg["images"]
        limit = int(s.get("max_tokens") or 16)
        choice = ((s.get("structured_outputs") or {}).get("choice") or [])
        self.samples: list[list[str]] = []
        for j in range(int(s.get("n") or 1)):
            h = f"{msg['text']}|{s.get('seed')}|{s.get('temperature')}|{j}"
            if choice:
                self.samples.append([choice[int(hashlib.sha256(h.encode()).hexdigest(), 16)
                                            % len(choice)]])
                continue
            n = limit if s.get("ignore_eos") else \
                int(hashlib.sha256(h.encode()).hexdigest()[:8], 16) % limit + 1
            self.samples.append(_words(h, n))
        self.limit, self.done = limit, 0

    def finished(self) -> bool:
        return self.done >= max(len(x) for x in self.samples)

    def result(self) -> dict[str, Any]:
        return {"key": self.key, "prompt_tokens": self.prompt_tokens, "samples": [
            [" ".join(w), "length" if len(w) == self.limit and len(w) > 1 else "stop", len(w)]
            for w in self.samples]}


def _send(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _faulty(o: dict[str, Any]) -> bool:
    """Whether this engine process gets the faults: the first `deaths` processes do."""
    if "deaths" not in o:
        return True
    counter = Path(o["state"]) / "engine-starts"
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    return n <= int(o["deaths"])


def main() -> None:
    o = options()
    window = int(sys.argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner shuts it down in order
    if o.get("sigints"):  # ... and a test can see whether a Ctrl-C reached it anyway
        fd = os.open(o["sigints"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        signal.signal(signal.SIGINT, lambda *_: os.write(fd, b"SIGINT\n"))
    print(f"fake engine: pid {os.getpid()}, window {window}", file=sys.stderr, flush=True)
    if o.get("fail_start"):
        print(f"ValueError: {o['fail_start']}", file=sys.stderr, flush=True)
        sys.exit(1)
    faulty = _faulty(o)
    trace = open(o["trace"], "a", buffering=1) if o.get("trace") else None  # noqa: SIM115
    if trace:
        trace.write(f"start {os.getpid()}\n")
    while o.get("hold_start") and not Path(o["hold_start"]).exists():  # a start that hangs
        time.sleep(0.02)
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    eof = threading.Event()  # the runner shut the engine down

    def read() -> None:
        for line in sys.stdin:
            msg = json.loads(line)
            if trace:
                trace.write(f"in {msg['key']}\n")
            inbox.put(msg)
        inbox.put(None)
        eof.set()

    threading.Thread(target=read, daemon=True).start()

    def hold() -> bool:
        """Wait at the gate; False when the runner shut the engine down meanwhile."""
        while not Path(o["gate"]).exists():
            if eof.wait(0.02):
                print("fake engine: shut down", file=sys.stderr, flush=True)
                return False
        return True

    _send({"ready": os.getpid()})
    if faulty and o.get("gate_after") == 0 and not hold():  # hold before any request
        return
    waiting: list[_Request] = []
    active: list[_Request] = []
    results, closed = 0, False
    while not (closed and not waiting and not active):
        try:
            while True:
                msg = inbox.get(block=not (waiting or active or closed))
                if msg is None:
                    closed = True
                    break
                waiting.append(_Request(msg))
                if not inbox.qsize():
                    break
        except queue.Empty:
            pass
        prompt = 0
        while waiting and len(active) < window:
            r = waiting.pop(0)
            if faulty and o.get("poison") and o["poison"] in r.text:
                os._exit(66)
            if faulty and o.get("hang") and o["hang"] in r.text:
                threading.Event().wait()  # hung: never answers again
            active.append(r)
            prompt += r.prompt_tokens
        if not active:
            continue
        time.sleep(float(o.get("delay_s", 0.002)))
        for r in active:
            r.done += 1
        _send({"tokens": [prompt, sum(len(r.samples) for r in active)]})
        for r in [r for r in active if r.finished()]:
            active.remove(r)
            if trace:
                trace.write(f"out {r.key}\n")
            _send(r.result())
            results += 1
            if faulty and results == o.get("die_after"):
                os.kill(os.getpid(), signal.SIGKILL)
            if faulty and results == o.get("stall_after"):
                threading.Event().wait()  # hung: never answers again
            if faulty and results == o.get("gate_after") and not hold():
                return
    print("fake engine: shut down", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
