"""The state file of the server `python -m runner.serve` runs on a store: where it listens and
the engine arguments it was started with, so a run can check them before sending anything.
No vLLM here (the client and the launcher both read it).

Layout: <store.root>/.serve/state.json (this file), server.log (vLLM's output),
engine_args.yaml (what vLLM's `--config` read).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from runner.config import RUNTIME_ENGINE_ARGS, EngineConfig, ModelConfig
from runner.files import atomic_write, read_json

# Engine arguments the launcher adds that change no output: vLLM's batch defaults of its
# offline LLM (so the server batches as in-process does), and no generation-config defaults
# (the runner sends every sampling field anyway).
ADDED_RUNTIME = frozenset({"allowed_local_media_path", "generation_config"})


def serve_dir(store_root: str | Path) -> Path:
    return Path(store_root) / ".serve"


def state_path(store_root: str | Path) -> Path:
    return serve_dir(store_root) / "state.json"


def read_state(store_root: str | Path) -> dict[str, Any] | None:
    return read_json(state_path(store_root), {}) or None


def write_state(store_root: str | Path, state: dict[str, Any]) -> None:
    serve_dir(store_root).mkdir(parents=True, exist_ok=True)
    atomic_write(state_path(store_root), json.dumps(state, indent=2) + "\n")


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def runtime_args() -> frozenset[str]:
    """Engine argument names that change no output: the config's fields marked `hash: False`
    (runner/config.py), engine.extra's runtime names, and what the launcher adds."""
    marked = {f.name for cls in (ModelConfig, EngineConfig) for f in dataclasses.fields(cls)
              if not f.metadata.get("hash", True)}
    return frozenset(marked) | RUNTIME_ENGINE_ARGS | ADDED_RUNTIME


def output_args(kw: dict[str, Any]) -> dict[str, Any]:
    """The engine arguments that change outputs (the ones in the run hash), JSON-normalized."""
    skip = runtime_args()
    return json.loads(json.dumps({k: v for k, v in kw.items() if k not in skip}, default=str))


def differences(config: dict[str, Any], server: dict[str, Any]) -> list[str]:
    """`key=server value (config: value)` for each output-changing argument that differs."""
    a, b = output_args(config), output_args(server)
    return [f"{k}={json.dumps(b.get(k))} (this config: {json.dumps(a.get(k))})"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
