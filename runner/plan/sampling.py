"""Sampling per request: the run's `sampling`, a set's and an item's `sampling:` overrides,
and `structured_outputs` (vLLM's StructuredOutputsParams names), checked before the engine
starts. No vLLM import here: the plan, the hash and the offline readers use it.

Merging: a command-line key over item over set over run, key by key; `structured_outputs` is
replaced whole (one constraint per request: an item's `choice` replaces the run's `json`, it
does not conflict).
A `json` schema given as a path to a .json file is read here, so keys and the run hash cover
the schema's content, not its path.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import SamplingConfig
from runner.errors import UserError

# vLLM's StructuredOutputsParams: the constraints (exactly one per request) and its options.
CONSTRAINTS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
SO_OPTIONS = ("disable_any_whitespace", "disable_additional_properties", "whitespace_pattern")
SO_KEYS = CONSTRAINTS + SO_OPTIONS


def sampling_keys() -> set[str]:
    return {f.name for f in dataclasses.fields(SamplingConfig)}


def load_schema(v: Any, what: str, base: Path, reads: Any = None) -> dict[str, Any]:
    """A JSON schema: a mapping, a JSON string, or a path to a .json file (relative to base)."""
    if isinstance(v, dict):
        schema = v
    elif isinstance(v, str) and v.lstrip().startswith("{"):
        try:
            schema = json.loads(v)
        except ValueError as e:
            raise UserError(f"{what}: not valid JSON ({e}).") from None
    elif isinstance(v, str):
        f = base / v
        if reads is not None:  # the plan's record of what it read (runner/plan/cache.py)
            reads.note(f)
        try:
            schema = json.loads(f.read_text(encoding="utf-8"))
        except OSError as e:
            raise UserError(f"{what}: cannot read the schema file {f} "
                            f"({e.strerror or e}).") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{what}: the schema file {f} is not valid JSON ({e}).") from None
        what = f"{what} ({f})"
    else:
        raise UserError(f"{what}: a JSON schema must be a mapping, a JSON string or a path "
                        f"to a .json file, not {type(v).__name__}.")
    if not isinstance(schema, dict):
        raise UserError(f"{what}: a JSON schema must be a JSON object.")
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - installed with vLLM
        return schema
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        at = "/".join(map(str, e.absolute_path)) or "top level"
        raise UserError(f"{what}: not a valid JSON schema at {at} ({e.message}).") from None
    return schema


def check_structured(so: Any, where: str, base: Path,
                     reads: Any = None) -> dict[str, Any] | None:
    """`structured_outputs` checked and normalized (a `json` file read into the schema)."""
    if not so:
        return None
    what = f"{where + ': ' if where else ''}sampling.structured_outputs"
    if not isinstance(so, dict):
        raise UserError(f"{what} must be a mapping of vLLM's StructuredOutputsParams "
                        f"({', '.join(SO_KEYS)}).")
    unknown = sorted(set(map(str, so)) - set(SO_KEYS))
    if unknown:
        raise UserError(f"{what}: unknown key(s) {', '.join(unknown)}; allowed: "
                        f"{', '.join(SO_KEYS)}.")
    kinds = [k for k in CONSTRAINTS if so.get(k) not in (None, False)]
    if len(kinds) != 1:
        raise UserError(f"{what}: set exactly one of {', '.join(CONSTRAINTS)}"
                        + (f", not {' and '.join(kinds)}." if kinds else "."))
    out = {k: v for k, v in so.items() if v is not None}
    k = kinds[0]
    if k == "json":
        out["json"] = load_schema(so["json"], f"{what}.json", base, reads)
    elif k == "regex":
        if not isinstance(so["regex"], str):
            raise UserError(f"{what}.regex must be a string.")
        try:
            re.compile(so["regex"])
        except re.error as e:
            raise UserError(f"{what}.regex: not a valid regular expression ({e}).") from None
    elif k == "choice":
        c = so["choice"]
        if not isinstance(c, list) or not c or not all(isinstance(x, str) for x in c):
            raise UserError(f"{what}.choice must be a non-empty list of strings.")
    elif k in ("grammar", "structural_tag") and not isinstance(so[k], str):
        raise UserError(f"{what}.{k} must be a string.")
    return out


def check_override(raw: Any, where: str, base: Path, reads: Any = None) -> dict[str, Any]:
    """A set's or an item's `sampling:` mapping, checked: known keys, a valid constraint."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: 'sampling' must be a mapping of sampling keys.")
    known = sampling_keys()
    unknown = sorted(set(map(str, raw)) - known)
    if unknown:
        raise UserError(f"{where}: unknown sampling key(s) {', '.join(unknown)}; allowed: "
                        f"{', '.join(sorted(known))}.")
    out = dict(raw)
    if "stop" in out and isinstance(out["stop"], str):
        out["stop"] = [out["stop"]]
    if "structured_outputs" in out:  # {} or null: unconstrained, over a constrained run
        out["structured_outputs"] = check_structured(out["structured_outputs"], where, base,
                                                     reads) or {}
    return out


def merge(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Later layers win, key by key (structured_outputs replaced whole)."""
    out: dict[str, Any] = {}
    for layer in layers:
        out.update(layer or {})
    return out


def checked_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    """The run's `sampling` config with its `structured_outputs` checked and a `json` file read
    (relative to the current directory); an empty one left out (as before it existed)."""
    out = dict(sampling)
    so = {k: v for k, v in (out.pop("structured_outputs", None) or {}).items() if v is not None}
    if so:
        out["structured_outputs"] = check_structured(so, "", Path.cwd())
    return out


def bound(sampling: dict[str, Any], prompt_tokens: int, max_model_len: int | None) -> int:
    """An output's token bound: max_tokens (else what is left of max_model_len) times n."""
    mt = sampling.get("max_tokens")
    n = int(sampling.get("n") or 1)
    return (mt or max(0, (max_model_len or prompt_tokens) - prompt_tokens)) * n


# OpenAI chat completion body fields honored as `vllm run-batch` honors them
# (ChatCompletionRequest.to_sampling_params): body name -> sampling key.
BODY_FIELDS = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens",
               "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
               "min_p": "min_p", "min_tokens": "min_tokens", "seed": "seed", "stop": "stop",
               "n": "n", "presence_penalty": "presence_penalty",
               "frequency_penalty": "frequency_penalty",
               "repetition_penalty": "repetition_penalty", "ignore_eos": "ignore_eos"}
# Fields that need no honoring: the chat itself, the run's own model, and neutral values.
BODY_NEUTRAL = {"messages", "model", "stream", "user", "metadata", "store"}


def from_batch_body(body: dict[str, Any], where: str, base: Path,
                    reads: Any = None) -> tuple[dict[str, Any], list[str]]:
    """A batch request body -> (its sampling override, the body fields it cannot honor).
    `max_completion_tokens` wins over `max_tokens` (vLLM's rule); null means the default."""
    over: dict[str, Any] = {}
    for name, key in BODY_FIELDS.items():  # max_completion_tokens comes after max_tokens
        if body.get(name) is not None:
            over[key] = body[name]
    rf = body.get("response_format")
    so = body.get("structured_outputs")  # vLLM's own extension
    if isinstance(rf, dict) and rf.get("type") == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        if schema is None:
            raise UserError(f"{where}: response_format json_schema needs json_schema.schema.")
        so = (so or {}) | {"json": schema}
    elif isinstance(rf, dict) and rf.get("type") == "json_object":
        so = (so or {}) | {"json_object": True}
    if so is not None:
        over["structured_outputs"] = so
    rf_ok = rf is None or (isinstance(rf, dict)
                           and rf.get("type") in ("text", "json_schema", "json_object"))
    ignored = sorted(k for k, v in body.items() if v is not None and k not in BODY_FIELDS
                     and k not in BODY_NEUTRAL and k != "structured_outputs"
                     and (k != "response_format" or not rf_ok))
    if body.get("stream"):
        ignored.append("stream")
    return check_override(over, where, base, reads), ignored


def sampling_of(cfg: DictConfig) -> dict[str, Any]:
    """The run's `sampling`, resolved and checked (checked_sampling)."""
    c = OmegaConf.to_container(cfg.sampling, resolve=True)
    assert isinstance(c, dict)
    return checked_sampling(c)


def command_line(overrides: list[str], sampling: dict[str, Any]) -> dict[str, Any]:
    """The run's sampling keys the user set on the command line (`sampling.KEY=...`, or every
    key of `sampling=OPTION`). They win over a set's and an item's `sampling:`, so a benchmark
    preset runs its protocol's sampling unless the user overrides it (docs/prompt-sets.md)."""
    keys: set[str] = set()
    for o in overrides:
        k = o.split("=", 1)[0].lstrip("+~")
        if k == "sampling":
            keys |= set(sampling)
        elif k.startswith("sampling."):
            keys.add(k.split(".")[1])
    return {k: sampling[k] for k in sorted(keys) if k in sampling}


def sources(explicit: dict[str, Any], item_sampling: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the sampling came from, for the manifest: the keys the set or its items set (each
    with its distinct values, at most 5) and those the command line set over them."""
    seen: dict[str, list[Any]] = {}
    for s in item_sampling:
        for k, v in s.items():
            vals = seen.setdefault(k, [])
            if v not in vals and len(vals) < 5:
                vals.append(v)
    return {"rule": "command line > item > set > run", "set_or_items": seen,
            "command_line": explicit}
