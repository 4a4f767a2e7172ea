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
not kept. The items' ids, keys and errors are read at once; the rest of each item (messages,
images, ...) only when something asks for it (`Item.__getattr__`): a finished run asks for
nothing more. Entries are pickles (Items as they are, fast to load): whoever can write the
store's `.cache/` can run code in the runner, so a store is to be trusted like the code.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import pickle
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    """What a plan read, each path with its stat taken before it was read."""

    started_ns: int = field(default_factory=time.time_ns)
    stats: dict[str, Stat] = field(default_factory=dict)

    def note(self, path: str | Path) -> None:
        p = str(path)
        if p not in self.stats:  # the first stat: the one taken before the first read
            self.stats[p] = stat_of(p)

    def racy(self) -> bool:
        """Some input was modified (or its inode changed) so close to the plan's start that a
        later change might keep the same stat."""
        edge = self.started_ns - RACY_NS
        return any(s is not None and max(s[1], s[2]) >= edge for s in self.stats.values())


_current: contextvars.ContextVar[Inputs | None] = contextvars.ContextVar("plan_inputs",
                                                                        default=None)


def note_read(path: str | Path) -> None:
    """A planning step read this file (or listed this folder): the plan depends on it."""
    if (inputs := _current.get()) is not None:
        inputs.note(path)


def current() -> Inputs | None:
    """The plan's recorder, for code that reads in other threads (contextvars stay here)."""
    return _current.get()


@contextmanager
def recording(inputs: Inputs) -> Iterator[Inputs]:
    token = _current.set(inputs)
    try:
        yield inputs
    finally:
        _current.reset(token)


def _code_digest() -> str:
    import PIL

    h = hashlib.sha256(PIL.__version__.encode())
    for f in sorted(Path(__file__).parent.glob("*.py")):  # every module of the plan stage
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


class PlanCache:
    """One set's entry under `<cache>/plans/`, for these options."""

    VERSION = 1

    def __init__(self, cache: Path, set_file: Path, options: dict[str, Any]):
        self.options = json.dumps({"set": str(set_file), "code": _code_digest(),
                                   "version": self.VERSION, **options}, sort_keys=True)
        name = hashlib.sha256(self.options.encode()).hexdigest()[:32]
        self.file = cache / "plans" / f"{name}.pickle"
        self._fresh: tuple[dict[str, Any], list[Any], Inputs] | None = None

    def load(self) -> Entry | None:
        """The cached plan if every input is as it was, else None."""
        try:
            with open(self.file, "rb") as fh, gc_paused():
                head = pickle.load(fh)
                if head.get("options") != self.options or not _unchanged(head["stats"]):
                    return None
                body = fh.read()  # the items in full, for whoever needs more than keys
            return Entry(head["plan"], head["ids"], head["keys"], head["errors"], Filler(body))
        except Exception:  # noqa: BLE001 - missing or damaged (any way): a cold cache
            return None

    def keep(self, plan: dict[str, Any], items: list[Any], inputs: Inputs) -> None:
        """What `save` will write: the plan's fields but its items, and its items as planned
        (a shard filter replaces the plan's list later)."""
        self._fresh = (plan, list(items), inputs)

    def save(self) -> None:
        """Keep the fresh plan for the next run, unless it is racy (best effort: a cache)."""
        fresh, self._fresh = self._fresh, None
        if fresh is None:
            return
        plan, items, inputs = fresh
        if inputs.racy():
            return
        for it in items:  # the store's copies it points to (converted, data:, downloads):
            for im in it.images:  # written once each, under a name of their content
                inputs.note(im.file)
        head = {"options": self.options, "stats": list(inputs.stats.items()), "plan": plan,
                "ids": [it.id for it in items], "keys": [it.key for it in items],
                "errors": {i: (it.error, it.error_kind) for i, it in enumerate(items)
                           if it.error}}
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.file, lambda fh: (pickle.dump(head, fh, protocol=5),
                                                pickle.dump(items, fh, protocol=5)),
                         sync=False)
        except (OSError, pickle.PicklingError):
            pass


@dataclass
class Entry:
    """A cached plan: its fields but its items, and per item its id, key and error (by
    index); `fill` gives an item the rest of its fields."""

    plan: dict[str, Any]
    ids: list[str]
    keys: list[str]
    errors: dict[int, tuple[str, str | None]]
    fill: Filler


def _unchanged(stats: list[tuple[str, Stat]]) -> bool:
    for path, was in stats:
        if stat_of(path) != was:
            return False
    return True


class Filler:
    """Gives a stub item of a cached plan its other fields, from the pickled items (unpickled
    once). It holds no stub: a plan dropped unfilled is freed by reference counting."""

    def __init__(self, body: bytes):
        self.body: bytes | None = body
        self.full: dict[str, Any] = {}  # by key
        self.lock = threading.Lock()

    def __call__(self, stub: Any) -> None:
        with self.lock:
            if "_fill" not in stub.__dict__:  # filled meanwhile by another thread
                return
            if self.body is not None:
                with gc_paused():
                    self.full = {it.key: it for it in pickle.loads(self.body)}
                self.body = None
            stub.__dict__.update(self.full.pop(stub.key).__dict__)  # each stub once
            stub.__dict__.pop("_fill", None)
