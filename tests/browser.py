"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe):
open a page, run JS in it, wait for a condition. No Python dependency beyond the stdlib.
Used by tests/test_report.py and bench/report_scale.py."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Browser:
    """One Chromium process with one tab. Chromium reads commands on fd 3 and answers on
    fd 4, each message JSON ended by a NUL byte."""

    def __init__(self, profile: Path, *extra: str, timeout: float = 60):
        assert CHROMIUM, "chromium is missing: run scripts/setup-browser.sh (make test does)"
        self.timeout = timeout
        # Chromium's ends moved to fds >= 10 first: the redirections to 3 and 4 then
        # never clobber one another
        to_r, self._to = os.pipe()
        self._from, from_w = os.pipe()
        to_r, from_w = (self._high(fd) for fd in (to_r, from_w))
        # bash puts the pipe ends on fds 3 and 4, where Chromium expects them (dash cannot:
        # it takes single-digit fds only)
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-',
             CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             *extra, "about:blank"], pass_fds=(to_r, from_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self._events: list[str] = []
        self.session: str | None = None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        self.send("Page.enable")

    @staticmethod
    def _high(fd: int) -> int:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        return high

    def _next(self, what: str) -> dict[str, Any]:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from], [], [], self.timeout)
            chunk = os.read(self._from, 1 << 20) if ready else b""
            assert chunk, f"chromium did not answer {what} (exit {self.proc.poll()})"
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """A command's result (events meanwhile are kept for `event`); an error raises."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        while True:
            answer = self._next(method)
            if answer.get("id") == self._id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return answer["result"]
            if "method" in answer:
                self._events.append(answer["method"])

    def event(self, method: str) -> None:
        """Wait for an event (e.g. Page.domContentEventFired) not seen yet."""
        while method not in self._events:
            m = self._next(method)
            if "method" in m:
                self._events.append(m["method"])
        self._events.remove(method)

    def js(self, expr: str) -> Any:
        """The value of a JS expression in the page (a promise is awaited)."""
        r = self.send("Runtime.evaluate", expression=expr, awaitPromise=True,
                      returnByValue=True)
        assert "exceptionDetails" not in r, r["exceptionDetails"]
        return r["result"].get("value")

    def wait(self, cond: str, timeout_ms: int = 30000) -> Any:
        """Poll a JS condition inside the page until it is truthy; its value."""
        return self.js(f"""new Promise((ok, bad) => {{
          const t0 = Date.now();
          (function poll() {{
            let v; try {{ v = ({cond}); }} catch (e) {{ v = undefined; }}
            if (v) ok(v);
            else if (Date.now() - t0 > {timeout_ms}) bad(new Error({json.dumps(cond)}));
            else setTimeout(poll, 10);
          }})();
        }})""")

    def open(self, url: str) -> None:
        """Load a page (a new document: not a change of the #fragment only) up to its
        DOMContentLoaded, so `js` runs in it."""
        self._events.clear()
        self.send("Page.navigate", url=url)
        self.event("Page.domContentEventFired")

    def close(self) -> None:
        self.session = None  # a browser-level command
        try:
            self.send("Browser.close")
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to)
        os.close(self._from)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
