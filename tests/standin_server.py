"""A stand-in for vLLM's OpenAI-compatible server, for the runner's own handling of a server
(its checks, timeouts, a server that dies): a real process that starts in a fraction of a
second. `python tests/standin_server.py PORTFILE` listens on a free loopback port and writes
it to PORTFILE once it answers. The environment variable STANDIN (JSON) sets:
`name`, `root`, `max_model_len` (its /v1/models card), `die_after` (exit at the request after
that many answers), `hang` (never answer a request whose text holds this marker), `refuse`
(HTTP 400 for a request whose text holds this marker), `drop` (read a request whose text holds
this marker, then close the connection unanswered), `truncate` (for such a request, answer 200
with half the promised body, then close), `slow` (seconds each answer takes while its tokens
count up on /metrics as `vllm:generation_tokens_total`, which `metrics` turns on).
As a judge (tests/test_judge.py): `judge` (answer "... Rating: [[N]]", N from a hash of the
request, 1..10), `unrated` (answer without a rating when the text holds this marker), `key`
(HTTP 401 unless the request carries `Authorization: Bearer <key>`), `trace` (a file: one
line `post PORT` per chat request received, PORT the client's, and `metrics PORT` per read of
/metrics), `gate_after` + `gate` (the chat requests after that many answers wait until the file
`gate` exists; while one waits, each read of /metrics finds the token counter grown by one, as
a server generating: a progress that owes nothing to the clock).
As a faulty gateway (tests/test_judge.py): `log` (a file: one JSON line per request received,
its method, path and headers), `redirect` (a base URL: every request but /health is answered
302 to it, the path kept), `answers` ({marker: [answer, ...]}: the n-th chat request whose
text holds the marker, or any with the marker `*`, gets the n-th answer, then the normal one;
`GET /v1/models` marks that GET. An answer is {"status", "headers", "body"}: the body as
written, or null to echo the request's headers, as a gateway that reports them does).
As a hosted API (tests/test_api.py): `drop_once` (the first request whose text holds this
marker is read, then its connection closed unanswered; later ones are answered), `served` (a
file: one line per chat request answered 200, the request's text), `fingerprint` (the
answers' system_fingerprint; their `model` is `name`).
As a server of OpenAI's chat API only (tests/test_server.py): `openai_only` (HTTP 400, worded
as OpenAI's API words it, for a request with any field that API does not define; no
`token_ids` in the answer), `no_usage` (answers without `usage`), `fields` (a file: one JSON
line per chat request, its field names and the status answered).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CFG = json.loads(os.environ.get("STANDIN", "{}"))
answered = 0
tokens = 0  # /metrics' vllm:generation_tokens_total
held = 0  # chat requests waiting at the gate
lock = threading.Lock()
never = threading.Event()


def text_of(messages: list[dict]) -> str:
    out = []
    for m in messages:
        c = m.get("content")
        out += [c] if isinstance(c, str) else [p.get("text", "") for p in c or []
                                               if p.get("type") == "text"]
    return " ".join(out)


# The request fields of OpenAI's chat completions API (its API reference), written out here
# rather than taken from the runner, so that a test of the runner's list can fail.
OPENAI_FIELDS = {"model", "messages", "n", "temperature", "top_p", "max_tokens",
                 "max_completion_tokens", "seed", "stop", "presence_penalty", "frequency_penalty",
                 "response_format", "logprobs", "top_logprobs", "logit_bias", "stream",
                 "stream_options", "user", "tools", "tool_choice", "parallel_tool_calls", "store",
                 "metadata", "service_tier", "modalities", "audio", "prediction",
                 "reasoning_effort", "web_search_options"}
scripted: dict[str, int] = {}  # answers given per marker
dropped: set[str] = set()  # the drop_once markers whose connection was closed already


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

    def log_message(self, *args: object) -> None:
        pass

    def _gateway(self, text: str | None) -> bool:
        """The faulty gateway's part (`log`, `redirect`, `answers`): True if it answered."""
        if CFG.get("log"):
            with lock, open(CFG["log"], "a") as f:
                f.write(json.dumps({"method": self.command, "path": self.path,
                                    "headers": dict(self.headers)}) + "\n")
        if CFG.get("redirect"):
            self.send_response(302)
            self.send_header("Location", CFG["redirect"] + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        for marker, answers in (CFG.get("answers") or {}).items():
            hit = (marker == f"GET {self.path}" if text is None
                   else marker == "*" or marker in text)
            with lock:
                n = scripted.get(marker, 0)
                if not hit or n >= len(answers):
                    continue
                scripted[marker] = n + 1
            a = answers[n]
            body = a["body"] if a.get("body") is not None else json.dumps(
                {"error": {"message": f"echo: {dict(self.headers)}"}})
            data = body.encode()
            self.send_response(a.get("status", 200))
            for k, v in (a.get("headers") or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return True
        return False

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _unauthorized(self) -> bool:
        if CFG.get("key") and self.headers.get("Authorization") != f"Bearer {CFG['key']}":
            self._send(401, {"error": {"message": "bad key", "code": 401}})
            return True
        return False

    def do_GET(self) -> None:
        global tokens
        if self.path != "/health" and self._gateway(None):
            return
        if self.path != "/health" and self._unauthorized():
            return
        if self.path == "/metrics" and CFG.get("trace"):
            with lock, open(CFG["trace"], "a") as f:
                f.write(f"metrics {self.client_address[1]}\n")
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/metrics" and CFG.get("metrics"):
            with lock:
                tokens += held > 0  # a request at the gate is generating
                data = f'vllm:generation_tokens_total{{model_name="x"}} {tokens}.0\n'.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": CFG.get("name", "standin"), "root": CFG.get("root", "standin"),
                 "max_model_len": CFG.get("max_model_len")}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        global answered, held
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = text_of(req["messages"])
        if self._gateway(text):
            return
        extra = sorted(set(req) - OPENAI_FIELDS) if CFG.get("openai_only") else []
        if CFG.get("fields"):
            with lock, open(CFG["fields"], "a") as f:
                f.write(json.dumps({"fields": sorted(req), "status": 400 if extra else 200})
                        + "\n")
        if extra:
            self._send(400, {"error": {
                "message": f"Unrecognized request argument{'s' * (len(extra) > 1)} supplied: "
                           + ", ".join(extra), "type": "invalid_request_error", "param": None,
                "code": None}})
            return
        if CFG.get("trace"):
            with lock, open(CFG["trace"], "a") as f:
                f.write(f"post {self.client_address[1]}\n")
        if CFG.get("gate_after") is not None:
            with lock:
                wait = answered >= CFG["gate_after"]
                held += wait
            while wait and not os.path.exists(CFG["gate"]):
                never.wait(0.05)  # polls the gate file the test creates
            with lock:
                held -= wait
        with lock:
            if CFG.get("die_after") is not None and answered >= CFG["die_after"]:
                os._exit(1)
        if CFG.get("hang") and CFG["hang"] in text:
            never.wait()
        once = CFG.get("drop_once")
        if once and once in text:
            with lock:
                first = once not in dropped
                dropped.add(once)
            if first:
                self.close_connection = True
                self.connection.shutdown(2)
                return
        if CFG.get("drop") and CFG["drop"] in text:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if CFG.get("truncate") and CFG["truncate"] in text:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "400")
            self.end_headers()
            self.wfile.write(b'{"id": "x", "choices": [')
            self.close_connection = True
            self.connection.shutdown(2)
            return
        for _ in range(int(CFG.get("slow", 0) / 0.05)):  # generating: its tokens count up
            never.wait(0.05)
            with lock:
                globals()["tokens"] += 1
        if CFG.get("refuse") and CFG["refuse"] in text:
            self._send(400, {"error": {"message": f"refused: {CFG['refuse']}", "code": 400}})
            return
        if self._unauthorized():
            return
        if CFG.get("judge"):
            digest = hashlib.sha256(text.encode()).hexdigest()
            said = ("I cannot tell." if CFG.get("unrated") and CFG["unrated"] in text
                    else f"Compared with the reference. Rating: [[{1 + int(digest, 16) % 10}]]")
            with lock:
                answered += 1
            self._send(200, {"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": said}}],
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": 8}})
            return
        n = int(req.get("n") or 1)
        images = sum(1 for m in req["messages"] if isinstance(m.get("content"), list)
                     for p in m["content"] if p.get("type") == "image_url")
        choices = [{"index": i, "finish_reason": "length", "message": {
            "role": "assistant",
            "content": f"answer {hashlib.sha256(f'{text}/{i}'.encode()).hexdigest()[:8]} "
                       f"images={images}"},
            **({"token_ids": [1, 2, 3]} if req.get("return_token_ids") else {})}
            for i in range(n)]
        with lock:
            answered += 1
            if CFG.get("served"):
                with open(CFG["served"], "a") as f:
                    f.write(json.dumps(text) + "\n")
        self._send(200, {"id": "x", "object": "chat.completion", "choices": choices,
                         "model": CFG.get("name", "standin"),
                         **({"system_fingerprint": CFG["fingerprint"]}
                            if CFG.get("fingerprint") else {}),
                         **({} if CFG.get("no_usage") else {
                             "usage": {"prompt_tokens": len(text.split()),
                                       "completion_tokens": 3 * n}})})


def main() -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    tmp = Path(sys.argv[1] + ".tmp")
    tmp.write_text(str(srv.server_address[1]))
    tmp.rename(sys.argv[1])  # listening already: the port file is the signal
    srv.serve_forever()


if __name__ == "__main__":
    main()
