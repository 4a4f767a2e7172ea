"""One run loader and one run resolver for every offline reader, and the config differ."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import UserError
from runner.files import read_json, read_jsonl, read_yaml
from runner.store.record import Record, latest_by_id, read_records

ABSENT = object()  # a key missing on one side of a diff


@dataclass
class Run:
    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    overrides: list[str]
    items: dict[str, Record]  # by item id, the latest record of each, in file order
    metrics: dict[str, Any]
    scores: dict[str, dict[str, Any]]  # scores.jsonl rows by item key

    @property
    def hash(self) -> str:
        return self.path.name

    @property
    def model(self) -> str:
        return self.manifest.get("model") or (self.config.get("model") or {}).get("name") or "?"


def load_run(path: Path) -> Run:
    path = Path(path)
    return Run(path, read_json(path / "manifest.json", {}), read_yaml(path / "config.yaml", {}),
               read_yaml(path / "overrides.yaml", []),
               latest_by_id(read_records(path).values()), read_json(path / "metrics.json", {}),
               {s["key"]: s for s in read_jsonl(path / "scores.jsonl") if "key" in s})


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in (
        "manifest.json", "config.yaml", "results.jsonl"))


def resolve(root: Path, ref: str) -> Path:
    """A run folder from a path to one, or from a unique hash prefix under `root` (as git
    does for commits). UserError (exit 2) when nothing or more than one run matches."""
    if is_run(Path(ref)):
        return Path(ref)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"No store at {root}; pass --root (the runs' store.root).")
    p = ref.strip().lower()
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                   and d.name.startswith(p)) if p else []
    if not names:
        raise UserError(f"No run matches '{ref}' in {root}.")
    if len(names) > 1 and p not in names:
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        raise UserError(f"Hash prefix '{ref}' is ambiguous: {shown}.")
    return root / (p if p in names else names[0])


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaves; lists and empty mappings are leaves."""
    if not isinstance(d, dict) or (not d and prefix):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def dict_diff(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) for every leaf that differs (ABSENT if missing)."""
    fa, fb = flatten(a), flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    return [(k, fa.get(k, ABSENT), fb.get(k, ABSENT)) for k in keys
            if fa.get(k, ABSENT) != fb.get(k, ABSENT)]


def config_diff(configs: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose values differ between the runs (a missing key counts as differing)."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if len({json.dumps(f.get(k, ABSENT), default=str) for f in flat}) > 1]


def sweep_dir(root: Path, sweep: str) -> Path:
    """A multirun folder: the path given, or its name under <root>/.sweeps/."""
    d = Path(sweep)
    if not d.is_dir() and (root / ".sweeps" / sweep).is_dir():
        d = root / ".sweeps" / sweep
    if not d.is_dir():
        raise UserError(f"Sweep folder {sweep} does not exist.")
    return d


def sweep_runs(root: Path, sweep: str) -> list[Path]:
    """Runs of a Hydra multirun folder, from the runs.json the runner writes there."""
    d = sweep_dir(root, sweep)
    listed = read_json(d / "runs.json", [])
    if not listed:
        raise UserError(f"{d} has no readable runs.json (a list of {{\"hash\": ...}} written "
                        "at the end of a sweep); pass the run hashes instead.")
    # a failed point (hash null) has no run
    return [resolve(root, str(x["hash"])) for x in listed if isinstance(x, dict) and x.get("hash")]


def named_runs(root: Path, hashes: list[str], sweep: str | None) -> list[Path]:
    """The runs a command names: hash prefixes or folders, then a sweep's points; each once."""
    dirs = [resolve(root, h) for h in hashes]
    if sweep:
        dirs += sweep_runs(root, sweep)
    return list(dict.fromkeys(dirs))
