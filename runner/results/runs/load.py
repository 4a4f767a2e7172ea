"""One run loader and one run resolver for every offline reader, and the config differ.

A run is read through one of its views (runner/store/view.py): the items one config planned.
`HASH@VIEW` names a view; a bare hash is the run's latest; `everything=True` (`--all`) reads
every record in the folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from runner.errors import UserError
from runner.files import read_json, read_jsonl, read_yaml
from runner.store.record import Record, latest_by_id, read_records
from runner.store.view import View, read_view
from runner.store.view import folder as view_folder

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
    view: View | None = None  # None: a run stored before views, or --all

    @property
    def hash(self) -> str:
        return self.path.name

    @property
    def ref(self) -> str:
        """HASH@VIEW: what names this run's figures (two views of a run are two columns)."""
        return f"{self.hash}@{self.view.id}" if self.view else self.hash

    @property
    def model(self) -> str:
        return self.manifest.get("model") or (self.config.get("model") or {}).get("name") or "?"


class Ref(NamedTuple):
    path: Path
    view: str | None = None  # a view id (prefix); None: the run's latest


def load_run(ref: Path | Ref, everything: bool = False) -> Run:
    """A run as one view sees it: its items, scores and metrics (views/<id>/); a run before
    views, or `everything`, sees every record of the folder."""
    path, vid = (ref.path, ref.view) if isinstance(ref, Ref) else (Path(ref), None)
    records = read_records(path)
    view = None if everything else read_view(path, vid)
    if vid and view is None and not everything:
        raise UserError(f"Run {path.name} has no view '{vid}' (views: "
                        f"{', '.join(views_of(path)) or 'none'}).")
    top = path if view is None else view_folder(path, view.id)
    scores = {s["key"]: s for s in read_jsonl(top / "scores.jsonl") if "key" in s}
    if view is not None:
        records = {k: records[k] for k in view.keys if k in records}
    elif everything:
        scores = {}  # a folder-wide view has no stored scores: `results score --all` makes them
    return Run(path, read_json(path / "manifest.json", {}), read_yaml(path / "config.yaml", {}),
               read_yaml(path / "overrides.yaml", []), latest_by_id(records.values()),
               read_json(top / "metrics.json", {}) if not everything else {}, scores, view)


def views_of(path: Path) -> list[str]:
    from runner.store.view import views

    return views(path)


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in (
        "manifest.json", "config.yaml", "results.jsonl"))


def ref_of(root: Path, ref: str) -> Ref:
    """`HASH[@VIEW]` (a hash prefix or a run folder, and a view id prefix) -> a Ref."""
    head, _, vid = ref.rpartition("@") if "@" in ref else (ref, "", "")
    return Ref(resolve(root, head), vid or None)


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


def sweep_runs(root: Path, sweep: str) -> list[Ref]:
    """Runs of a Hydra multirun folder, from the runs.json the runner writes there."""
    d = sweep_dir(root, sweep)
    listed = read_json(d / "runs.json", [])
    if not listed:
        raise UserError(f"{d} has no readable runs.json (a list of {{\"hash\": ...}} written "
                        "at the end of a sweep); pass the run hashes instead.")
    # a failed point (hash null) has no run; each point is read through its own view
    return [Ref(resolve(root, str(x["hash"])), x.get("view")) for x in listed
            if isinstance(x, dict) and x.get("hash")]


def named_runs(root: Path, hashes: list[str], sweep: str | None) -> list[Ref]:
    """The runs a command names: HASH[@VIEW] or folders, then a sweep's points; each once."""
    dirs = [ref_of(root, h) for h in hashes]
    if sweep:
        dirs += sweep_runs(root, sweep)
    # a bare hash is its latest view: the same run named twice is read once
    latest = [Ref(d.path, d.view or (read_json(d.path / "manifest.json", {}).get("view")
                                     or {}).get("id")) for d in dirs]
    return list(dict.fromkeys(latest))
