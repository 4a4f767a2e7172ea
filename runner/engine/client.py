"""A vLLM OpenAI-compatible server behind the Engine interface (api.py): each request is one
POST /v1/chat/completions from one of min(`window`, engine.max_connections) worker threads,
each with one kept-alive connection, so the pool is bounded whatever max_num_seqs is; answers
come back as the same events as from an in-process engine.

Under faults: anything that goes wrong with one request is that item's error; a POST is sent
once (a connection lost after it was sent may have been read, so it is never resent: the
item's error, which `retry_errors` repairs); the run stops (ServerGone) only when /health
fails, or when the server makes no progress at all for engine.stall_timeout_s (no answer and
its /metrics token counters still; a server without them counts as progressing while its
/health answers, each request being bounded by engine.request_timeout_s, and a warning says so
once).

A hosted model (model.api, docs/api.md) is asked the same way, over https with its key as a
Bearer token, to the configured origin only (http.client follows no redirect; a 3xx stops the
run); 429 and 503 are asked again after their Retry-After, a connection lost before the answer
is asked again (an API has no /health to tell a dead one), 401 and 403 stop the run, and what
the API reported (model id, system_fingerprint) joins the manifest's `server`. The key is
redacted from every message the API sends back.

Before anything is sent, `connect.connect` finds and checks the server (connect.py).
Standard library only: no vLLM, no torch (a warm run imports neither).
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlparse

from runner.engine import fields
from runner.engine.api import Event, Failed, Finished, Sample
from runner.engine.connect import (
    CHECK_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_RETRY_AFTER_S,
    SPEC,
    START,
    api_path,
    connect,
    healthy,
    origin,
    retry_after,
)
from runner.errors import ServerGone, UserError
from runner.plan.images import inline_images


def _error_message(body: bytes) -> str:
    try:
        d = json.loads(body)
        e = d.get("error", d)
        msg = e.get("message") if isinstance(e, dict) else str(e)
    except (ValueError, AttributeError):
        msg = body[:300].decode(errors="replace")
    return " ".join(str(msg).split())[:300]


class _Lost(Exception):
    """The server is gone (refused a connection, or a request failed and /health fails)."""


class _Dropped(Exception):
    """The connection failed after the request was sent; the server still answers /health."""


class _Stop(Exception):
    """The API refused the key (401/403) or redirected: the run stops with this sentence."""


@dataclass(frozen=True)
class _Fatal:
    message: str


# vLLM's token counters on /metrics (Prometheus text); they grow while the server generates.
_TOKENS = re.compile(rb"^vllm:(?:prompt|generation)_tokens_total(?:\{[^}]*\})?\s+([0-9.e+]+)",
                     re.MULTILINE)


def _progress_mark(url: str) -> float | None:
    """The server's token counters summed (None: no /metrics); OSError if it does not answer."""
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80,
                                   timeout=CHECK_TIMEOUT_S)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read()
    except http.client.HTTPException as e:
        raise OSError(str(e)) from None
    finally:
        c.close()
    found = _TOKENS.findall(body) if r.status == 200 else []
    return sum(float(x) for x in found) if found else None


class ServerEngine:
    kind = "server"
    steps = False
    watchdog = "on"  # a dead server refuses connections; a hung one times requests out

    def __init__(self, kw: dict[str, Any]):
        self.spec = kw[SPEC]
        self.args = {k: v for k, v in kw.items() if k != SPEC}
        c = connect(self.spec, self.args)
        self.url, self.model_id, self.server = c.url, c.model_id, c.info
        self.max_num_seqs = c.max_num_seqs
        u = urlparse(self.url)
        self.api: dict[str, Any] | None = self.spec.get("api")
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname or "127.0.0.1", u.port or (443 if self.https else 80)
        self.where = origin(self.url)  # for messages: no secrets of the URL
        self.chat = api_path(self.url, "/chat/completions") if self.api else \
            "/v1/chat/completions"
        self.key = os.environ.get(str(self.api["key_env"]), "") if self.api and \
            self.api.get("key_env") else ""
        self.headers = {"Content-Type": "application/json"} | (
            {"Authorization": f"Bearer {self.key}"} if self.key else {})
        self._stop = threading.Event()  # cuts a Retry-After wait short at shutdown
        self.timeout = self.spec["request_timeout_s"]
        self.max_gap_s = 0.0
        self._todo: queue.Queue[tuple[int, str, list, dict] | None] = queue.Queue()
        self._out: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._pending: dict[str, None] = {}  # submitted, not yet yielded, in submit order
        self._epoch = 0  # requests of an abandoned events() loop are dropped by their epoch
        self._conns: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self._dead: str | None = None
        self._told_no_mark = False  # the warning that /metrics has no token counters
        self._refused: dict[str, str] = {}  # vLLM's fields the server refused: its words
        self.pool = min(self.max_num_seqs, int(self.spec.get("max_connections")
                                                or MAX_CONNECTIONS))
        self.server["connections"] = self.pool
        self._threads = [threading.Thread(target=self._worker, daemon=True,
                                          name=f"server-client-{i}")
                         for i in range(self.pool)]
        for t in self._threads:
            t.start()

    # --- the Engine interface -----------------------------------------------------------

    def submit(self, key: str, messages: list[dict[str, Any]],
               sampling: dict[str, Any]) -> None:
        self._pending[key] = None
        self._todo.put((self._epoch, key, messages, sampling))

    def in_flight(self) -> int:
        return len(self._pending)

    def events(self, stall_timeout_s: float | None = None) -> Iterator[Event]:
        if self.api:  # no /metrics to tell a stall: each request is bounded by its timeout
            stall_timeout_s = None
        last = time.monotonic()  # the server's last progress
        mark: float | None = None
        try:
            while self._pending:
                try:
                    epoch, ev = self._out.get(timeout=0.2)
                except queue.Empty:
                    if stall_timeout_s and time.monotonic() - last > stall_timeout_s:
                        moved, mark = self._progressed(mark)
                        if not moved:
                            self._gone(f"no progress for {stall_timeout_s:g} s, "
                                       "engine.stall_timeout_s")
                        last = time.monotonic()
                    continue
                now = time.monotonic()
                self.max_gap_s, last = max(self.max_gap_s, now - last), now
                if epoch != self._epoch:
                    continue
                if isinstance(ev, str):
                    self._gone(ev)
                if isinstance(ev, _Fatal):
                    self._dead = ev.message
                    raise UserError(ev.message)
                self._pending.pop(ev.key, None)
                yield ev
        except BaseException:
            self._abandon()
            raise

    def _progressed(self, mark: float | None) -> tuple[bool, float | None]:
        """Whether the server made progress since `mark` (its token counters grew; without
        /metrics: it answers /health), and the new mark."""
        try:
            now = _progress_mark(self.url)
        except OSError as e:
            self._gone(f"/health and /metrics fail: {e}")
        if now is None:
            if not self._told_no_mark:  # stall detection is weaker from here on: say so once
                self._told_no_mark = True
                from runner.console import console

                console.print(f"[yellow]warning: {self.url}/metrics has no "
                              "vllm:prompt_tokens_total or vllm:generation_tokens_total; a "
                              "stall is seen only when /health fails or a request outlasts "
                              "engine.request_timeout_s.")
            return healthy(self.url, CHECK_TIMEOUT_S), None
        return mark is None or now > mark, now

    def _gone(self, reason: str) -> NoReturn:
        self._dead = reason
        n = len(self._pending)
        if self.api:
            raise ServerGone(f"The API at {self.where} stopped answering ({reason}) with {n} "
                             "requests in flight; what finished is stored: rerun the same "
                             "command to resume.")
        raise ServerGone(f"The vLLM server at {self.url} stopped answering ({reason}) with {n} "
                         "requests in flight; what finished is stored: start the server again "
                         f"(`{START}`) and rerun the same command to resume.")

    def why_dead(self) -> str | None:
        return self._dead

    def kill(self) -> None:
        self._abandon()

    def shutdown(self) -> None:
        self._stop.set()
        self._abandon()
        for _ in self._threads:
            self._todo.put(None)
        for t in self._threads:
            t.join(5)

    def drop(self) -> None:
        """The server is not this process's to stop: its connections close."""
        self.shutdown()

    def describe(self) -> dict[str, Any]:
        """What the config asks for; the server's kernels are not visible from here."""
        return {"method": self.args.get("quantization"), "kernel": None, "scheme": None,
                "served_by": self.where}

    # --- the workers ----------------------------------------------------------------------

    def _abandon(self) -> None:
        """Drop what is queued or in flight: closing a connection makes vLLM abort its
        request."""
        self._epoch += 1
        self._pending.clear()
        try:
            while True:
                self._todo.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            for c in list(self._conns):
                if c.sock is not None:
                    try:
                        c.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def _worker(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while (job := self._todo.get()) is not None:
            epoch, key, messages, sampling = job
            if epoch != self._epoch:
                continue
            ev: Any
            try:
                req = self._request(messages, sampling)
            except Exception as e:  # noqa: BLE001 - any image's failure is this item's error
                what = "image unreadable" if isinstance(e, OSError) else \
                    f"image unreadable: {type(e).__name__}"
                self._out.put((epoch, Failed(key, f"{what}: {e}", "image")))
                continue
            try:
                conn, ev = self._exchange(conn, key, req, sampling)
            except _Stop as e:
                conn = self._close(conn)
                ev = _Fatal(str(e))
            except TimeoutError:
                conn = self._close(conn)
                ev = Failed(key, f"no answer from the server within engine.request_timeout_s="
                                 f"{self.timeout:g} s", "timeout")
            except _Lost as e:
                conn = self._close(conn)
                ev = str(e)  # the server is gone: events() raises ServerGone
            except _Dropped as e:
                conn = self._close(conn)
                ev = Failed(key, f"the connection to the server was lost after the request was "
                                 f"sent ({e}); not resent, as the server may have read it",
                            "request")
            except Exception as e:  # noqa: BLE001 - anything else: this item's error
                conn = self._close(conn)
                ev = Failed(key, f"unreadable answer from the server: {type(e).__name__}: {e}",
                            "request")
            self._out.put((epoch, ev))
        self._close(conn)

    def _exchange(self, conn: http.client.HTTPConnection | None, key: str, req: dict[str, Any],
                  sampling: dict[str, Any]) -> tuple[http.client.HTTPConnection | None, Any]:
        """One item's request; for an API, asked again (up to api.retries times) after a 429 or
        503 (waiting its Retry-After, else 1 s doubling) or a connection lost before the
        answer; sent again without the vLLM fields a refusal names (fields.py)."""
        tries = 1 + (int(self.api["retries"]) if self.api else 0)
        attempt = 0
        while True:
            with self._lock:
                sent, why = fields.without(req, self._refused)
            if why:
                return conn, Failed(key, why, "sampling")
            body = json.dumps(sent, ensure_ascii=False).encode()
            try:
                conn, status, data, after = self._post(conn, body)
            except _Dropped:
                if attempt == tries - 1:
                    raise
                conn = self._close(conn)
                self._count("resent_after_lost_connection", 1)
                attempt += 1
                continue
            if names := fields.refused(status, self.redact(data.decode(errors="replace")), sent):
                with self._lock:  # each pass leaves out at least one more field: bounded
                    for n in names:
                        self._refused.setdefault(n, self.redact(_error_message(data)))
                    self.server["refused_fields"] = sorted(self._refused)
                continue
            if self.api and status in (429, 503) and attempt < tries - 1:
                wait = retry_after(after, time.time())
                if wait > MAX_RETRY_AFTER_S:
                    return conn, Failed(key, f"the API answered HTTP {status} with Retry-After "
                                             f"{wait:g} s, over the bound of "
                                             f"{MAX_RETRY_AFTER_S:g} s", "request")
                wait = wait if after else float(2 ** attempt)
                self._count("rate_limited", 1)
                self._count("waited_s", wait)
                self._stop.wait(wait)
                attempt += 1
                continue
            return conn, self._answer(key, status, data, sampling)

    def _count(self, what: str, n: float) -> None:
        with self._lock:
            self.server[what] = self.server.get(what, 0) + n

    def redact(self, text: str) -> str:
        """`text` without the key (an API may echo the request's headers)."""
        return text.replace(self.key, "[redacted]") if self.key else text

    def _request(self, messages: list[dict[str, Any]],
                 sampling: dict[str, Any]) -> dict[str, Any]:
        s = {k: v for k, v in sampling.items() if v is not None}
        if int(s.get("n") or 1) > 1:
            s[fields.COUNTS_ONLY] = True  # each sample's token count
        return {"model": self.model_id, "messages": inline_images(messages), **s}

    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        c = cls(self.host, self.port, timeout=self.timeout)
        with self._lock:
            self._conns.add(c)
        return c

    def _close(self, c: http.client.HTTPConnection | None) -> None:
        if c is not None:
            c.close()
            with self._lock:
                self._conns.discard(c)
        return None

    @staticmethod
    def _idle_closed(c: http.client.HTTPConnection) -> bool:
        """Whether a kept-alive connection was closed by the server while idle (readable with
        nothing asked means EOF or junk): checked before sending, never retried after."""
        if c.sock is None:
            return True
        try:
            return bool(select.select([c.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def _post(self, conn: http.client.HTTPConnection | None,
              body: bytes) -> tuple[http.client.HTTPConnection, int, bytes, str | None]:
        """One request, sent once. A kept-alive connection the server closed while idle is
        replaced before anything is sent; a connection that cannot be opened is a gone server
        (_Lost); one lost after the request went out is _Dropped while /health answers (the
        server may have read it, so it is not resent), else _Lost; for an API, _Dropped (no
        /health). TimeoutError passes. Returns the Retry-After header too."""
        if conn is None or self._idle_closed(conn):
            conn = self._close(conn) or self._connection()
            try:
                conn.connect()
            except TimeoutError:
                raise
            except OSError as e:
                raise _Lost(f"{type(e).__name__}: {e}") from None
        try:
            conn.request("POST", self.chat, body=body, headers=self.headers)
            r = conn.getresponse()
            return conn, r.status, r.read(), r.getheader("Retry-After")
        except TimeoutError:
            raise
        except (OSError, http.client.HTTPException) as e:
            why = self.redact(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            if self.api or healthy(self.url, CHECK_TIMEOUT_S):
                raise _Dropped(why) from None
            raise _Lost(why) from None

    def _answer(self, key: str, status: int, data: bytes,
                sampling: dict[str, Any]) -> Finished | Failed:
        if self.api and (status in (401, 403) or 300 <= status < 400):
            what = "a redirect is not followed, so that the key goes to model.api.url only: " \
                   "set it to the address that answers" if status < 400 else \
                f"check the key in {self.api.get('key_env') or 'model.api.key_env'}"
            raise _Stop(f"The API at {self.where} answered HTTP {status} "
                        f"({self.redact(_error_message(data))}): {what}.")
        if status != 200:
            if status >= 500 and not self.api and not healthy(self.url, CHECK_TIMEOUT_S):
                raise _Lost(f"HTTP {status}, then /health failed")
            return Failed(key, f"the server refused the request (HTTP {status}): "
                               f"{self.redact(_error_message(data))}", "request")
        d = json.loads(data)
        if self.api:
            self._reported(d)
        choices = sorted(d.get("choices") or [], key=lambda c: c.get("index", 0))
        # what the server did not say stays unknown (None), never 0
        usage = d.get("usage") if isinstance(d.get("usage"), dict) else {}
        prompt, total = (v if isinstance(v := usage.get(k), int) else None
                         for k in ("prompt_tokens", "completion_tokens"))
        ids = [c.get("token_ids") for c in choices]
        each = all(isinstance(x, list) for x in ids) and len(choices) > 1
        counts = [len(x) for x in ids] if each else [total] if len(choices) == 1 else \
            [None] * len(choices)
        return Finished(key, prompt,
                        [Sample(c.get("message", {}).get("content") or "", c.get("finish_reason"),
                                n) for c, n in zip(choices, counts, strict=True)],
                        None if each or len(choices) == 1 else total)

    def _reported(self, d: dict[str, Any]) -> None:
        """What the API said it ran (model id, system_fingerprint): the manifest's `server`."""
        with self._lock:
            seen = self.server.setdefault("reported", {})
            for k in ("model", "system_fingerprint"):
                v = d.get(k)
                if isinstance(v, str) and v not in seen.setdefault(k, []):
                    seen[k].append(self.redact(v)[:200])
