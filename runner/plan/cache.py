"""The plan cache: a rerun of an unchanged set reuses its plan instead of planning every item
(100k images: one stat each, no per-item Python work).

Kept in the store (<store>/.cache/plans/), never in the prompt set. An entry is found by the
set file's path and the plan's options (and the code that plans), and holds every input the
plan read with its stat, as git's index does: the set file, a JSONL it names, a schema file,
an image folder's listing (the folder's stat), each image (stat'ed before it was read) and
each copy in the store's cache an item points to. Any input whose stat differs (or that
appeared or went away) means the set is planned again; the image stat cache
(runner/plan/statcache.py) still spares that plan from reading unchanged images. An input modified
within RACY_NS of the plan's start may change again within one timestamp tick: such a plan is
not kept; nor is a plan with a download that failed (it may succeed next time).

An entry holds the plan as planned, with only the errors the plan itself found (bad images,
too many images): errors that depend on the model (too long for max_model_len, refused by its
tokenizer) are counted again by each run (runner/plan/tokens.py), never read back from here.
The items' ids, keys and errors are read at once; the rest of each item (messages, images,
...) only when something asks for it (`Item.__getattr__`): a finished run asks for nothing
more. Entries are JSON lines, data only: an entry that is not what this code wrote (damaged,
planted, another format) is a cold cache; every item is built afresh from it, so nothing a
job changes reaches the entry or another job.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from runner.files import atomic_write, gc_paused
from runner.plan.statcache import RACY_NS, stat_key

Stat = tuple[int, int, int, int] | None  # statcache.stat_key, None: not there
# The modules whose code makes the plan: a new version of any of them plans anew.


def stat_of(path: str) -> Stat:
    try:
        return stat_key(os.stat(path))
    except OSError:
        return None


@dataclass
class Inputs:
    """What a plan read, each path with its stat taken before it was read: the one record of
    the plan's inputs, handed to whatever reads for the plan (runner/plan/sources.py,
    sampling.py, images.py), which tells it of each file or folder before reading it."""

    started_ns: int = field(default_factory=time.time_ns)
    stats: dict[str, Stat] = field(default_factory=dict)
    volatile: bool = False  # read something that may read otherwise next time (a download)

    def note(self, path: str | Path) -> None:
        p = str(path)
        if p not in self.stats:  # the first stat: the one taken before the first read
            self.stats[p] = stat_of(p)

    def racy(self) -> bool:
        """Some input was modified (or its inode changed) so close to the plan's start that a
        later change might keep the same stat; or it read a download that failed."""
        if self.volatile:
            return True
        edge = self.started_ns - RACY_NS
        return any(s is not None and max(s[1], s[2]) >= edge for s in self.stats.values())


@cache
def code_digest() -> str:
    """The code that plans (every module of the plan stage) and Pillow's version."""
    import PIL

    h = hashlib.sha256(PIL.__version__.encode())
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


class PlanCache:
    """One set's entry under `<cache>/plans/`, for these options."""

    VERSION = 2  # 2: JSON lines (entries of version 1 are never read)

    def __init__(self, cache: Path, set_file: Path, options: dict[str, Any],
                 image: Callable[..., Any]):
        """`image`: what an item's image is built as (runner.plan.images.Image)."""
        self.image = image
        self.options = json.dumps({"set": str(set_file), "code": code_digest(),
                                   "version": self.VERSION, **options}, sort_keys=True)
        name = hashlib.sha256(self.options.encode()).hexdigest()[:32]
        self.file = cache / "plans" / f"{name}.jsonl"
        self._fresh: tuple[dict[str, Any], list[Any], list[bytes], Inputs] | None = None

    def load(self) -> Entry | None:
        """The cached plan if every input is as it was, else None."""
        try:
            with open(self.file, "rb") as fh, gc_paused():
                head = json.loads(fh.readline())
                if head.get("options") != self.options or not _unchanged(head["stats"]):
                    return None
                body = fh.read()  # the items in full, for whoever needs more than keys
            plan = head["plan"]
            plan = {**plan, "file": Path(plan["file"]), "root": Path(plan["root"])}
            errors = {int(i): (e, k) for i, (e, k) in head["errors"].items()}
            ids, keys = head["ids"], head["keys"]
            if not (len(ids) == len(keys) and all(isinstance(x, str) for x in ids + keys)):
                return None
            return Entry(plan, ids, keys, errors, Filler(body, self.image))
        except Exception:  # noqa: BLE001 - missing, damaged or not ours (any way): cold
            return None

    def keep(self, plan: dict[str, Any], items: list[Any], inputs: Inputs) -> None:
        """What `save` will write: the plan's fields but its items, and its items as planned
        now, before a run counts tokens (a shard filter replaces the plan's list later)."""
        try:
            docs = [item_doc(it) for it in items]  # a copy: the job's items stay the job's
        except (TypeError, ValueError):  # a value JSON cannot hold (a YAML date): not kept
            return
        self._fresh = (plan, list(items), docs, inputs)

    def save(self) -> None:
        """Keep the fresh plan for the next run, unless it is racy (best effort: a cache)."""
        fresh, self._fresh = self._fresh, None
        if fresh is None:
            return
        plan, items, docs, inputs = fresh
        if inputs.racy():
            return
        for it in items:  # the store's copies it points to (converted, data:, downloads):
            for im in it.images:  # written once each, under a name of their content
                inputs.note(im.file)
        errors = {}
        for i, doc in enumerate(docs):
            d = json.loads(doc)
            if d["error"]:
                errors[i] = (d["error"], d["error_kind"])
        head = {"options": self.options, "stats": list(inputs.stats.items()),
                "plan": {**plan, "file": str(plan["file"]), "root": str(plan["root"])},
                "ids": [it.id for it in items], "keys": [it.key for it in items],
                "errors": errors}
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.file, lambda fh: fh.write(
                json.dumps(head).encode() + b"\n" + b"\n".join(docs) + b"\n"), sync=False)
        except (OSError, TypeError, ValueError):
            pass


def item_doc(it: Any) -> bytes:
    """An item as one JSON line (the plan's own fields; its images as lists)."""
    d = {k: v for k, v in it.__dict__.items() if not k.startswith("_")}
    d["images"] = [[im.path, str(im.file), im.sha256, im.width, im.height, im.norm]
                   for im in it.images]
    return json.dumps(d, ensure_ascii=False, allow_nan=False).encode()


@dataclass
class Entry:
    """A cached plan: its fields but its items, and per item its id, key and error (by
    index); `fill` gives an item the rest of its fields."""

    plan: dict[str, Any]
    ids: list[str]
    keys: list[str]
    errors: dict[int, tuple[str, str | None]]
    fill: Filler


def _unchanged(stats: list[list[Any]]) -> bool:
    for path, was in stats:
        if stat_of(path) != (tuple(was) if was is not None else None):
            return False
    return True


class Filler:
    """Gives a stub item of a cached plan its other fields, from the entry's JSON lines
    (parsed once). It holds no stub: a plan dropped unfilled is freed by reference counting.
    The stub keeps its own id, key and errors (a run may have counted its tokens)."""

    def __init__(self, body: bytes, image: Callable[..., Any]):
        self.body: bytes | None = body
        self.image = image
        self.full: dict[str, dict[str, Any]] = {}  # by key
        self.lock = threading.Lock()

    def __call__(self, stub: Any) -> None:
        with self.lock:
            if "_fill" not in stub.__dict__:  # filled meanwhile by another thread
                return
            if self.body is not None:
                with gc_paused():
                    docs = [json.loads(line) for line in self.body.splitlines() if line]
                self.full = {d["key"]: d for d in docs}
                self.body = None
            d = self.full.pop(stub.key)  # each stub once
            d["images"] = [self.image(p, Path(f), sha, w, h, n)
                           for p, f, sha, w, h, n in d["images"]]
            for k in ("id", "key", "error", "error_kind"):
                d.pop(k, None)
            stub.__dict__.update(d)
            stub.__dict__.pop("_fill", None)
