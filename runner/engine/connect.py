"""Finding the vLLM server a run sends its requests to, before anything is sent: `connect`
checks that it serves the configured model and, when `python -m runner.serve` started it,
that the engine arguments that change outputs equal the config's (server_state.py); any
other server only with engine.trust_server=true. Standard library only.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from runner.engine.server_state import alive, differences, read_state, state_path
from runner.errors import UserError

SPEC = "runner_server"  # the key of the client's settings in the engine kwargs (slot.py)
DEFAULT_WINDOW = 64  # in flight when neither the config nor the state file says max_num_seqs
MAX_CONNECTIONS = 64  # the pool's bound when the spec names none (engine.max_connections)
CHECK_TIMEOUT_S = 10.0
MAX_RETRY_AFTER_S = 300.0  # a longer Retry-After (a spent quota) fails the item: no stalled run
START = "python -m runner.serve"


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether the vLLM server at `url` answers its /health with 200."""
    u = urlparse(url)
    try:
        c = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout)
        try:
            c.request("GET", "/health")
            return c.getresponse().status == 200
        finally:
            c.close()
    except (OSError, http.client.HTTPException):
        return False


def spec_of(cfg: Any) -> dict[str, Any]:
    """The client's settings from a config (they join the engine kwargs, so a sweep reuses the
    client while they are equal). A hosted model's (model.api) add `api`: never its key."""
    e, m = cfg.engine, cfg.model
    a = m.get("api") or {}
    if a.get("url"):
        return {"url": str(a.url).rstrip("/"), "store": str(Path(cfg.store.root).resolve()),
                "request_timeout_s": e.request_timeout_s, "name": m.name,
                "api": {"model": a.model, "provider": a.provider, "key_env": a.key_env,
                        "in_flight": int(a.in_flight), "retries": int(a.retries)}}
    return {"url": e.url.rstrip("/"), "store": str(Path(cfg.store.root).resolve()),
            "trust_server": bool(e.trust_server), "request_timeout_s": e.request_timeout_s,
            "window": e.max_num_seqs, "name": m.name, "hf_repo": m.hf_repo,
            "max_connections": e.max_connections}


@dataclass
class Connection:
    url: str
    model_id: str  # what requests name as `model`
    max_num_seqs: int  # what the server runs at once (its max_num_seqs)
    info: dict[str, Any] = field(default_factory=dict)  # the manifest's `server`


def _get_json(url: str, path: str) -> Any:
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80,
                                      timeout=CHECK_TIMEOUT_S)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise OSError(f"HTTP {r.status} from {path}")
        return json.loads(body)
    finally:
        conn.close()


def retry_after(value: str | None, now: float) -> float:
    """The seconds a Retry-After header asks for: delay-seconds or an HTTP date (against `now`);
    0 when absent or unreadable."""
    v = (value or "").strip()
    if v.isdigit():
        return float(v)
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return 0.0
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


def origin(url: str) -> str:
    """The URL as the manifest may show it: no user:password, query or fragment."""
    u = urlparse(url)
    return f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}{u.path.rstrip('/')}"


def api_path(url: str, path: str) -> str:
    """`/v1/<path>` under the URL's path (one that ends in /v1 already has it)."""
    base = urlparse(url).path.rstrip("/")
    return base + (path if base.endswith("/v1") else "/v1" + path)


def connect_api(spec: dict[str, Any]) -> Connection:
    """A hosted model's API (model.api): only its URL is checked here; the key, the model id
    and the answers are checked by the first requests (an API may not list its models)."""
    a, url = spec["api"], spec["url"]
    if not url.startswith(("https://", "http://")):
        raise UserError(f"model.api.url={origin(url)} is not an http(s):// URL; fix it.")
    if not a.get("model"):
        raise UserError("model.api.url is set but model.api.model is not: name the model id "
                        "the API serves.")
    if a.get("key_env") and not os.environ.get(str(a["key_env"])):
        raise UserError(f"model.api.key_env names {a['key_env']}, which is not set: export the "
                        "API key in that variable.")
    info = {"url": origin(url), "api": True, "provider": a.get("provider"),
            "model": a["model"], "checked": "nothing before the first request (an API)",
            "in_flight": int(a["in_flight"]), "reported": {"model": [],
                                                           "system_fingerprint": []}}
    return Connection(url, str(a["model"]), int(a["in_flight"]), info)


def connect(spec: dict[str, Any], args: dict[str, Any]) -> Connection:
    """Find the server, check it serves this config's model with this config's output-changing
    engine arguments; one sentence (UserError, exit 2) for anything that does not hold."""
    if spec.get("api"):
        return connect_api(spec)
    url, store = spec["url"], spec["store"]
    st = read_state(store)
    if url == "serve":
        if not st:
            raise UserError(f"engine=server: no server runs on store {store} (no "
                            f"{state_path(store)}): start one with `{START}` and this run's "
                            "model/engine overrides, or set engine.url=http://HOST:PORT.")
        url = st["url"]
    if not url.startswith("http://"):
        raise UserError(f"engine.url={url} is neither http://HOST:PORT nor `serve`; fix it.")
    ours = st if st and st.get("url") == url else None
    if ours and not alive(ours.get("pid")):
        raise UserError(f"The server in {state_path(store)} ({url}, pid {ours.get('pid')}) is "
                        f"not running any more: start it again with `{START}`.")
    try:
        cards = _get_json(url, "/v1/models").get("data") or []
    except (OSError, http.client.HTTPException, ValueError, AttributeError) as e:
        raise UserError(f"No vLLM server answers at engine.url={url} ({e}): start it (`{START}`"
                        ") or fix engine.url.") from None
    want = {args["model"], spec["name"], spec["hf_repo"]} - {None}
    card = next((c for c in cards if c.get("id") in want or c.get("root") in want), None)
    served = ", ".join(f"{c.get('id')} ({c.get('root')})" for c in cards) or "no model"
    if card is None or (ours and card.get("root") != ours.get("model")):
        raise UserError(f"The server at {url} serves {served}, not this config's "
                        f"{spec['name']} ({args['model']}): point engine.url at a server for "
                        f"it, or start one with `{START}` and this run's overrides.")
    mml, smml = args.get("max_model_len"), card.get("max_model_len")
    if mml is not None and smml is not None and int(mml) != int(smml):
        raise UserError(f"The server at {url} runs max_model_len={smml}, this config "
                        f"model.max_model_len={mml}: they must be equal (it changes outputs).")
    if ours:
        diffs = differences(args, ours.get("engine_args") or {})
        if diffs:
            raise UserError(f"The server at {url} was started with {'; '.join(diffs)}, which "
                            f"change outputs: restart it (`{START}` with this run's "
                            "model/engine overrides) or run with its values.")
        checked = "engine arguments (runner.serve state file) and /v1/models"
    elif not spec["trust_server"]:
        raise UserError(f"The server at {url} was not started by `{START}` on store {store}, "
                        "so its engine arguments (dtype, quantization, tokenizer mode) cannot "
                        "be checked: set engine.trust_server=true to use it anyway (the "
                        "manifest records it).")
    else:
        checked = "model and max_model_len only (/v1/models); engine.trust_server=true"
    sargs = (ours or {}).get("engine_args") or {}
    window = spec["window"] or sargs.get("max_num_seqs") or \
        (ours or {}).get("added", {}).get("max_num_seqs") or DEFAULT_WINDOW
    info = {"url": url, "model": card.get("id"), "root": card.get("root"),
            "started_by": "runner.serve" if ours else "unknown",
            "pid": (ours or {}).get("pid"), "trust_server": not ours,
            "checked": checked, "in_flight": int(window)}
    return Connection(url, str(card.get("id")), int(window), info)
