"""A run's views: which of its stored items one config planned.

`prompts.limit`, `prompts.source`, `prompts.benchmark` and the set's content are outside the
run hash (item keys address each result, so nothing is computed twice), so one run folder can
hold the items of several configs. A view is the set of item keys one config planned (every
shard's), named by the digest of those keys: every figure a run reports (its summary,
metrics.json, the card, the sweep table, `results show`) covers exactly one view.

Layout: <run>/views/<id>/view.json (the keys and where they came from), and beside it the
view's scores.jsonl and metrics.json; the run's own metrics.json and scores.jsonl are those of
its latest view (the manifest's `view`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.files import atomic_write, read_json

VIEW_LEN = 12


def digest(keys: list[str]) -> str:
    """SHA-256 of the sorted item keys, one per line: the view's identity."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


@dataclass(frozen=True)
class View:
    keys: list[str]  # in plan order
    ids: list[str]  # the items' ids, same order
    source: dict[str, Any] = field(default_factory=dict)  # the set, and a benchmark's origin

    @property
    def digest(self) -> str:
        return digest(self.keys)

    @property
    def id(self) -> str:
        return self.digest[:VIEW_LEN]

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def subset(self) -> bool:
        """Fewer items than the benchmark's split has (a published figure covers all)."""
        rows, planned = self.source.get("split_rows"), self.source.get("rows_planned")
        return bool(self.source.get("limit")) or (
            rows is not None and planned is not None and planned < rows)

    def brief(self) -> dict[str, Any]:
        """What the manifest and the card carry."""
        return {"id": self.id, "n": self.n, "digest": self.digest, "subset": self.subset,
                **{k: v for k, v in self.source.items() if k != "file"}}


def folder(run_dir: Path, vid: str) -> Path:
    return Path(run_dir) / "views" / vid


def register(run_dir: Path, view: View) -> None:
    """Write the view's file (content-addressed: the same keys give the same file)."""
    f = folder(run_dir, view.id) / "view.json"
    doc = asdict(view) | {"id": view.id, "digest": view.digest}
    if read_json(f, None) != doc:
        f.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(f, json.dumps(doc, ensure_ascii=False) + "\n")


def read_view(run_dir: Path, vid: str | None = None) -> View | None:
    """A view of the run by id (or unique id prefix); None: the run's latest (the manifest's),
    or None for a run stored before views."""
    run_dir = Path(run_dir)
    if vid is None:
        vid = (read_json(run_dir / "manifest.json", {}).get("view") or {}).get("id")
        if vid is None:
            return None
    names = [d.name for d in (run_dir / "views").glob(f"{vid}*") if d.is_dir()]
    if len(names) != 1:
        return None
    doc = read_json(folder(run_dir, names[0]) / "view.json", None)
    if not isinstance(doc, dict):
        return None
    return View(list(doc.get("keys") or []), list(doc.get("ids") or []), doc.get("source") or {})


def views(run_dir: Path) -> list[str]:
    return sorted(d.name for d in (Path(run_dir) / "views").glob("*") if d.is_dir())
