"""An LLM judge over a stored run (`python -m runner.results judge RUN [overrides]`,
docs/judges.md): each output, with its item's conversation, images and reference answer, goes
to an OpenAI-compatible chat endpoint (`python -m runner.serve`, any vLLM server, or an API);
the rating is parsed from the answer. Judgements are stored beside the run, one line per item
per judge configuration, appended as results.jsonl is (kill -9 loses at most the lines being
asked), and a line is never asked again: rescoring with the same judge costs no call.

Standard library HTTP (urllib), no vLLM. The prompt is built as mistral-evals builds MM-MT-Bench's
(eval/tasks/mm_mt_bench.py, MultimodalLLMJudge._get_judge_prompt), with the image in its place.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.engine.connect import MAX_RETRY_AFTER_S, retry_after
from runner.errors import OverBudget, ServerGone, UserError
from runner.files import LockBusy, atomic_write, cut_torn_tail, locked, read_yaml
from runner.results.judging.judged import folder, read_lines, request_hash, write_aggregates
from runner.store.record import Record, latest_by_id, now, read_records
from runner.store.view import View, read_view

HASHED = ("system", "start", "user", "reference", "answer", "end", "rating_pattern", "scale",
          "max_tokens", "temperature", "extra_body", "reasks")  # + the model served
CHECK_TIMEOUT_S = 10.0
RETRIED_4XX = (408, 429)  # the client errors that may succeed when asked again (and every 5xx)


class Unreachable(Exception):
    """The endpoint did not answer at all (refused, reset, unknown host): not an item's error."""


class JudgeFailed(Exception):
    """This request failed after its retries (refusal, rate limit, timeout, bad answer)."""


# --- the prompt -------------------------------------------------------------------------------


def _add(prompt: list[dict[str, Any]], part: str | dict[str, Any]) -> None:
    """A text joins the last text part (as mistral-evals' _add_or_append_chunk merges them); an
    image is its own part, in its place."""
    if isinstance(part, dict) and part.get("type") == "image_url":
        prompt.append(part)
        return
    text = part["text"] if isinstance(part, dict) else part
    if prompt and prompt[-1]["type"] == "text":
        prompt[-1]["text"] += text
    else:
        prompt.append({"type": "text", "text": text})


def turns_of(messages: list[dict[str, Any]], expected: Any) -> list[tuple[Any, str]]:
    """(user content, reference answer) per user turn: an earlier turn's reference is the
    assistant message after it (the set's reference answer, as MM-MT-Bench's items carry it),
    the last turn's is the item's `expected`."""
    out: list[tuple[Any, str]] = []
    for i, m in enumerate(messages):
        if m.get("role") != "user":
            continue
        nxt = messages[i + 1] if i + 1 < len(messages) else None
        ref = nxt.get("content") if nxt and nxt.get("role") == "assistant" else None
        out.append((m.get("content"), ref))
    if out:
        out[-1] = (out[-1][0], expected if isinstance(expected, str) else json.dumps(expected))
    return [(q, r if isinstance(r, str) else "") for q, r in out]


def judge_prompt(j: Any, messages: list[dict[str, Any]], expected: Any, answer: str
                 ) -> list[dict[str, Any]]:
    """The judge's user content: `start`, each user turn (`user`, its parts, `reference`), the
    assistant's `answer`, `end`."""
    prompt: list[dict[str, Any]] = [{"type": "text", "text": j.start}]
    for q, ref in turns_of(messages, expected):
        _add(prompt, j.user)
        for part in [q] if isinstance(q, str) else q or []:
            _add(prompt, part)
        _add(prompt, j.reference.replace("{reference}", ref))
    _add(prompt, j.answer.replace("{answer}", answer))
    _add(prompt, j.end)
    return prompt


def request_body(j: Any, model: str, prompt: list[dict[str, Any]]) -> dict[str, Any]:
    extra = OmegaConf.to_container(j.extra_body, resolve=True) if isinstance(
        j.extra_body, DictConfig) else dict(j.extra_body or {})
    msgs = ([{"role": "system", "content": j.system}] if j.system else []) + [
        {"role": "user", "content": prompt}]
    return {"model": model, "messages": msgs, "max_tokens": j.max_tokens,
            "temperature": j.temperature, **extra}


def parse_rating(j: Any, text: str) -> float | None:
    """The first match's group 1 as a number, inside the scale; None otherwise."""
    m = re.search(j.rating_pattern, text or "")
    if not m:
        return None
    try:
        v = float(m.group(1))
    except (ValueError, IndexError):
        return None
    lo, hi = j.scale
    return v if lo <= v <= hi else None


# --- the endpoint -----------------------------------------------------------------------------


def endpoint_url(url: str, store: Path) -> str:
    """`serve` -> the URL in the store's server state file; otherwise the URL as given."""
    if url == "serve":
        from runner.engine.server_state import read_state, state_path

        st = read_state(str(store))
        if not st:
            raise UserError(f"judge.url=serve: no server runs on store {store} (no "
                            f"{state_path(str(store))}): start one with `python -m runner.serve "
                            f"store.root={store} model=...`, or set judge.url=http://HOST:PORT.")
        url = st["url"]
    if not url.startswith(("http://", "https://")):
        raise UserError(f"judge.url must be `serve` or an http(s):// URL, not '{url}'.")
    return url.rstrip("/")


def _api(base: str, path: str) -> str:
    return base + (path if base.endswith("/v1") else "/v1" + path)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: urllib's own handler copies every header, Authorization included,
    to whatever URL a 3xx names (another host, https to http). The 3xx is an HTTPError then."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


class Endpoint:
    def __init__(self, j: Any, store: Path):
        self.j = j
        self.base = endpoint_url(str(j.url), store)
        self.headers = {"Content-Type": "application/json"}
        self.key = ""
        if j.api_key_env:
            self.key = os.environ.get(str(j.api_key_env)) or ""
            if not self.key:
                raise UserError(f"judge.api_key_env names {j.api_key_env}, which is not set: "
                                "export the API key in that variable.")
            self.headers["Authorization"] = f"Bearer {self.key}"
        self.open = urllib.request.build_opener(NoRedirect).open
        self.sleep: Callable[[float], None] = time.sleep  # tests record the waits instead
        self.clock: Callable[[], float] = time.time  # "now" for a Retry-After date

    def redact(self, text: str) -> str:
        """`text` without the key: a server's words go to the store (a gateway may echo the
        request's headers). Before any cut, or a prefix of the key would stay."""
        return text.replace(self.key, "[redacted]") if self.key else text

    def model(self) -> str:
        """The model to ask, checked against /v1/models (an API may not list it: then as
        configured). One sentence when nothing answers."""
        try:
            req = urllib.request.Request(_api(self.base, "/models"), headers=self.headers)
            with self.open(req, timeout=CHECK_TIMEOUT_S) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            if 300 <= e.code < 400:
                raise UserError(f"The judge at {self.base} answered HTTP {e.code} to /v1/models "
                                f"(a redirect to {self.redact(str(e.headers.get('Location')))}"
                                "), which is not followed, so that the API key goes to judge.url "
                                "only: set judge.url to the address that answers.") from None
            if e.code in (401, 403):
                raise UserError(f"The judge at {self.base} refused the request (HTTP {e.code}): "
                                f"check the API key in {self.j.api_key_env or 'judge.api_key_env'}."
                                ) from None
            if self.j.model:
                return str(self.j.model)
            raise UserError(f"The judge at {self.base} answered HTTP {e.code} to /v1/models; "
                            "set judge.model.") from None
        except (OSError, ValueError) as e:
            raise UserError(f"The judge at {self.base} does not answer ({self.redact(_why(e))}): "
                            "start it, or set judge.url to a server that runs.") from None
        if self.j.model:
            return str(self.j.model)
        if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
            raise UserError(f"The judge at {self.base} answered /v1/models with JSON that is not "
                            "an object with a `data` list; set judge.model.")
        ids = [m.get("id") for m in doc["data"] if isinstance(m, dict)]
        if len(ids) != 1:
            raise UserError(f"The judge at {self.base} serves {len(ids)} models "
                            f"({', '.join(map(str, ids[:5]))}); name one with judge.model.")
        return str(ids[0])

    def ask(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion: {"choices": [{"message": {"content"}}], "usage"}, the text
        redacted. Retried `retries` times with doubling backoff, raised to the server's
        Retry-After on 429 and 503, on a timeout, an answer without text, HTTP 408, 429 or a
        5xx. A redirect or another 4xx fails at once: asked again, it fails again."""
        data, wait, last = json.dumps(body).encode(), float(self.j.backoff_s), ""
        tries, after = int(self.j.retries) + 1, 0.0
        for attempt in range(tries):
            if attempt:
                self.sleep(max(wait, after))
                wait *= 2
            after = 0.0
            req = urllib.request.Request(_api(self.base, "/chat/completions"), data=data,
                                         headers=self.headers)
            try:
                with self.open(req, timeout=float(self.j.timeout_s)) as r:
                    out = json.loads(r.read())
                text, why = _text(out)
                if text is None:
                    last = why
                    continue
                usage = out.get("usage") if isinstance(out.get("usage"), dict) else {}
                return {"choices": [{"message": {"content": self.redact(text)}}],
                        "usage": {k: v for k, v in usage.items() if isinstance(v, int)}}
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {self._body(e)}"
                if 300 <= e.code < 400:
                    raise JudgeFailed(f"HTTP {e.code} to {e.headers.get('Location')}: a redirect "
                                      "is not followed, so that the API key goes to judge.url "
                                      "only; set judge.url to the address that answers") from None
                if e.code < 500 and e.code not in RETRIED_4XX:
                    raise JudgeFailed(f"{last} (not retried)") from None
                if e.code in (429, 503):
                    after = retry_after(e.headers.get("Retry-After"), self.clock())
                    if after > MAX_RETRY_AFTER_S:
                        raise JudgeFailed(f"{last}; Retry-After {after:g} s, over the bound of "
                                          f"{MAX_RETRY_AFTER_S:g} s") from None
            except TimeoutError:
                last = f"no answer within judge.timeout_s={self.j.timeout_s}"
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    last = f"no answer within judge.timeout_s={self.j.timeout_s}"
                else:
                    last = self.redact(_why(e))
                    if attempt == tries - 1:
                        raise Unreachable(last) from None
            except (OSError, ValueError) as e:  # reset mid-answer, a body that is not JSON
                last = self.redact(_why(e))
        raise JudgeFailed(f"{last} (after {tries} tries)")

    def _body(self, e: urllib.error.HTTPError) -> str:
        """An error's message, redacted, then cut to 200 characters."""
        try:
            d = json.loads(e.read())
            err = d.get("error") if isinstance(d, dict) else None
            said = str((err.get("message") if isinstance(err, dict) else None) or d)
        except (OSError, ValueError):
            said = str(e.reason)
        return self.redact(said)[:200]


def _text(out: Any) -> tuple[str | None, str]:
    """A chat completion's answer text, or None and why there is none."""
    if not isinstance(out, dict):
        return None, f"the answer is not a JSON object ({json.dumps(out)[:40]})"
    choices = out.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(choice, dict):
        return None, "the answer's choices[0] is not a JSON object"
    message = choice.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        return message["content"], ""
    return None, f"no text in the answer (finish_reason {choice.get('finish_reason')})"


def _why(e: BaseException) -> str:
    r = getattr(e, "reason", None) or e
    return str(getattr(r, "strerror", None) or r)[:200]


# --- the store --------------------------------------------------------------------------------


def judge_id(j: Any, model: str) -> str:
    c = OmegaConf.to_container(j, resolve=True) if isinstance(j, DictConfig) else dict(j)
    doc = {k: c[k] for k in HASHED} | {"model": model}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


# --- judging a run ----------------------------------------------------------------------------


def _conversations(run_dir: Path, records: list[Record],
                   view: View | None) -> dict[str, list[dict[str, Any]]]:
    """Each record key's messages as the model got them, from the set file the view recorded
    (a benchmark import is never changed once made: runner/benchmarks/preset.py), not from
    whatever the config's set is now."""
    from runner.plan.load import load_plan

    cfg = OmegaConf.create(read_yaml(Path(run_dir) / "config.yaml", {}))
    cfg.shard = {"index": 0, "count": 1}  # every shard's items: the run folder holds them all
    if view is not None and view.source.get("file"):
        cfg.prompts.name, cfg.prompts.limit = view.source["file"], view.source.get("limit")
    try:
        plan = load_plan(cfg, show=False)
    except UserError as e:
        raise UserError(f"Cannot read the prompt set of run {Path(run_dir).name}: {e}") from None
    by_key = {it.key: it.messages for it in plan.items}
    missing = [r["id"] for r in records if r["key"] not in by_key]
    if missing:
        raise UserError(f"{len(missing)} judged items of run {Path(run_dir).name} are not in its "
                        f"prompt set any more (first: {missing[0]}); restore the set it ran.")
    return by_key


def judge_run(run_dir: Path, j: Any, on_line: Any = None,
              view: View | None = None) -> dict[str, Any]:
    """Judge every stored output of the view (default: the run's latest) with a reference
    answer that this judge has not judged yet (at most `judge.in_flight` requests at a time),
    then return the view's aggregates (judged.py), also written to
    judgements/<id>.metrics.json. `on_line(line)` sees each new line."""
    run_dir = Path(run_dir)
    cfg = read_yaml(run_dir / "config.yaml", {})
    view = view or read_view(run_dir)
    stored = read_records(run_dir)
    mine = stored.values() if view is None else [stored[k] for k in view.keys if k in stored]
    records = [r for r in latest_by_id(mine).values()
               if r.get("status") == "ok" and r.get("expected") is not None]
    # With judge.model named, a judge whose every line is stored needs no server at all.
    ep = None if j.model else Endpoint(j, run_dir.parent)
    model = str(j.model) if j.model else ep.model()  # type: ignore[union-attr]
    jid = judge_id(j, model)
    out = folder(run_dir)
    out.mkdir(exist_ok=True)
    path = out / f"{jid}.jsonl"
    try:
        with locked(run_dir.parent / ".locks" / f"{run_dir.name}.judge-{jid}.lock", wait=False):
            cut_torn_tail(path)  # a line torn by a kill: we are its only writer now
            described = {"id": jid, "name": j.name, "model": model,
                         **{k: OmegaConf.to_container(j, resolve=True)[k] for k in HASHED}}
            atomic_write(out / f"{jid}.json", json.dumps(described, indent=2) + "\n")
            done = {h for h, x in read_lines(run_dir, jid).items() if x["status"] != "error"}
            todo = [r for r in records if request_hash(jid, r) not in done]
            if todo:
                if ep is None:
                    ep = Endpoint(j, run_dir.parent)
                    ep.model()  # one sentence now if nothing answers
                _ask_all(run_dir, j, ep, model, jid, path, todo, len(records),
                         cfg.get("prompts") or {}, on_line, view)
    except LockBusy as e:
        raise UserError(f"Run {run_dir.name} is being judged by this judge in {e.holder}; "
                        "wait for it.") from None
    return write_aggregates(run_dir, jid, records)


def _ask_all(run_dir: Path, j: Any, ep: Endpoint, model: str, jid: str, path: Path,
             todo: list[Record], total: int, prompts: dict[str, Any], on_line: Any,
             view: View | None = None) -> None:
    from runner.plan.images import inline_images
    from runner.store.rundir import ResultWriter

    convs = _conversations(run_dir, todo, view)
    rate = prompts.get("max_error_rate")
    errors = 0  # this invocation's: a stored error line is being asked again
    stop = threading.Event()

    def one(r: Record) -> dict[str, Any]:
        if stop.is_set():
            return {}
        prompt = judge_prompt(j, inline_images(convs[r["key"]]), r["expected"], r["output"])
        body = request_body(j, model, prompt)
        line = {"id": r["id"], "key": r["key"], "request": request_hash(jid, r), "judge": jid}
        text, usage, asks = "", {}, 0
        try:
            for asks in range(1, int(j.reasks) + 2):  # bounded: never an endless loop
                ans = ep.ask(body)
                text = ans["choices"][0]["message"]["content"]
                u = ans.get("usage") or {}
                usage = {k: usage.get(k, 0) + (u.get(k) or 0)
                         for k in ("prompt_tokens", "completion_tokens")}
                rating = parse_rating(j, text)
                if rating is not None:
                    return line | {"status": "rated", "rating": rating, "judgement": text,
                                   "asks": asks, **usage, "time": now()}
            return line | {"status": "unrated", "rating": None, "judgement": text,
                           "reason": f"no rating matching judge.rating_pattern within "
                           f"judge.scale in {asks} answers", "asks": asks, **usage,
                           "time": now()}
        except JudgeFailed as e:
            return line | {"status": "error", "rating": None, "judgement": text,
                           "reason": str(e), "asks": asks, **usage, "time": now()}

    w = ResultWriter(path)
    pool = ThreadPoolExecutor(max(1, int(j.in_flight)))
    try:
        futs = [pool.submit(one, r) for r in todo]
        for f in as_completed(futs):
            try:
                line = f.result()
            except Unreachable as e:
                stop.set()
                raise ServerGone(f"The judge at {ep.base} stopped answering ({e}); the "
                                 f"judgements stored in {path} are kept: start it again and "
                                 "rerun.") from None
            if not line:
                continue
            w.write(line)
            if on_line:
                on_line(line)
            errors += line["status"] == "error"
            if rate is not None and errors > float(rate) * total:
                stop.set()
                raise OverBudget(f"{errors} of {total} judged items are judge errors, over "
                                 f"prompts.max_error_rate={rate} (last: {line['reason']}); "
                                 f"the judgements stored in {path} are kept.")
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        w.close()
