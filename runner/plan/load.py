"""Stage 2, plan: a prompt set on disk -> planned items (messages, images, content keys).

No model is loaded here. Formats are read by `runner.plan.sources` (as a stream), images checked,
hashed once and normalized if needed by `runner.plan.images`; vLLM reads them itself through
`allowed_local_media_path` (prompts.root or the set's root; converted copies in the store's
cache are sent as data: URLs). Problems with the whole set raise UserError;
problems with one item (a bad image, too many images) set `Item.error` and the run goes on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Any

from runner.config import shipped
from runner.errors import UserError
from runner.files import gc_paused
from runner.plan.cache import Entry, Inputs, PlanCache
from runner.plan.images import Image, ImageError, ImageOptions, Images, pixel_limit
from runner.plan.sampling import merge
from runner.plan.sources import Spec, read_set, take

__all__ = ["Image", "Item", "Plan", "check_errors", "find_set", "item_key", "load_plan",
           "load_set"]

SET_FILE = "set.yaml"


@dataclass
class Item:
    id: str
    messages: list[dict[str, Any]]  # OpenAI chat format; image parts carry a file:// URL
    images: list[Image]
    expected: str | None = None
    tags: list[str] = field(default_factory=list)
    key: str = ""  # digest of the content, image bytes and normalization included
    metadata: dict[str, Any] = field(default_factory=dict)
    scorer: str | list[str] | None = None  # read by runner.results.scoring.score
    error: str | None = None  # set at plan time: stored as an error, never sent to the engine
    # The set's and the item's `sampling:` merged (not the run's): in the key when not empty.
    sampling: dict[str, Any] = field(default_factory=dict)
    error_kind: str | None = None  # the error's kind (runner/kinds.py), with `error`

    def __getattr__(self, name: str) -> Any:
        """Only for an item of a cached plan (runner/plan/cache.py), which holds its id, key and
        error: its other fields are read the first time one is asked for."""
        fill = self.__dict__.get("_fill")
        if fill is None or name not in _FIELDS:
            raise AttributeError(name)
        fill(self)
        return object.__getattribute__(self, name)

    def __getstate__(self) -> dict[str, Any]:
        if (fill := self.__dict__.get("_fill")) is not None:
            fill(self)
        return self.__dict__

    @property
    def text(self) -> str:
        """The last user turn's text, for display."""
        for m in reversed(self.messages):
            if m["role"] == "user":
                c = m["content"]
                if isinstance(c, str):
                    return c
                return " ".join(p["text"] for p in c if p["type"] == "text")
        return ""


_FIELDS = frozenset(f.name for f in fields(Item))


@dataclass
class Plan:
    name: str
    file: Path
    root: Path  # images must stay inside it (normalized copies live in the store's cache)
    items: list[Item]
    format: str = "items"
    ignored: dict[str, int] = field(default_factory=dict)  # batch body field -> requests
    images: Images | None = field(default=None, repr=False)
    # A fresh plan's entry in the plan cache (saved by `remember`); None for a cached plan.
    cache: PlanCache | None = field(default=None, repr=False)
    # (id, key) of every item the config plans, every shard's: the run's view
    # (runner/store/view.py); `items` is this shard's
    whole: list[tuple[str, str]] = field(default_factory=list, repr=False)

    @property
    def errors(self) -> list[Item]:
        return [it for it in self.items if it.error]

    def remember(self) -> None:
        """Keep what planning learned: the images (the stat cache) and the plan (the plan
        cache). The job calls it once the run goes ahead: a user error, or a dry run, writes
        nothing."""
        if self.images is not None:
            self.images.close()
        if self.cache is not None:
            self.cache.save()


def shipped_root(root: str | Path) -> Path | None:
    """The sets the runner ships, where the default root (`prompts`) is run outside a
    checkout and so names no folder; None otherwise."""
    return shipped("prompts") if str(root) == "prompts" and not Path(root).is_dir() else None


def find_set(name: str, root: str | Path) -> Path:
    """`name` is a set under `root` (<root>/<name>/set.yaml or set.jsonl, <root>/<name>.yaml or
    .jsonl) or a path to a set file (YAML or JSONL) or to a folder with a set.yaml."""
    r = Path(root)
    cand = [r / name / SET_FILE, r / f"{name}.yaml", r / f"{name}.jsonl",
            r / name / "set.jsonl", Path(name), Path(name) / SET_FILE]
    if (s := shipped_root(root)) is not None:
        cand += [s / name / SET_FILE, s / name / "set.jsonl"]
    for c in cand:
        if c.is_file():
            return c.resolve()
    known = sorted({p.parent.name for p in r.glob(f"*/{SET_FILE}")}
                   | {p.stem for p in r.glob("*.jsonl")})
    raise UserError(f"Unknown prompt set '{name}': no {cand[0]}, {cand[1]} or {cand[2]}; "
                    f"known sets in {root}/: {', '.join(known) or 'none'} (set prompts.name=...).")


def item_key(item_id: str, messages: list[dict], images: Iterable[Image],
             sampling: dict[str, Any] | None = None) -> str:
    """Digest of what the model sees: the messages with each image replaced by the sha256 of its
    original bytes (and, if it was converted, the conversion settings), and the item's sampling
    override when it has one (items without one keep the keys they always had)."""
    by_uri = {im.url: ({"image": im.sha256, "norm": im.norm} if im.norm
                                 else {"image": im.sha256}) for im in images}

    def canon(c: Any) -> Any:
        if isinstance(c, list):
            return [by_uri.get(p["image_url"]["url"], p) if p["type"] == "image_url" else p
                    for p in c]
        return c

    body = [{"role": m["role"], "content": canon(m["content"])} for m in messages]
    doc: dict[str, Any] = {"id": item_id, "messages": body}
    if sampling:
        doc["sampling"] = sampling
    blob = json.dumps(doc, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _item(s: Spec, img: Images, system: str | None, scorer: str | list[str] | None,
          max_images: int | None, sampling: dict[str, Any] | None = None) -> Item:
    images: list[Image] = []
    bad: list[str] = []  # reasons, and sha256 of bad bytes (so a fixed file changes the key)
    messages: list[dict[str, Any]] = []
    sys_prompt = s.system if s.system is not None else system
    if sys_prompt and not any(role == "system" for role, _ in s.turns):
        messages.append({"role": "system", "content": sys_prompt})
    for role, parts in s.turns:
        content: list[dict[str, Any]] = []
        for kind, val in parts:
            if kind == "text":
                content.append({"type": "text", "text": val})
                continue
            try:
                im = img(val, s.base, s.where)
                images.append(im)
                url = im.url
            except ImageError as e:
                bad += [str(e), e.sha256]
                url = val if val.startswith(("http", "file:")) else f"unresolved:{val[:200]}"
            content.append({"type": "image_url", "image_url": {"url": url}})
        one_text = len(content) == 1 and content[0]["type"] == "text"
        messages.append({"role": role, "content": content[0]["text"] if one_text else content})
    n_img = sum(kind == "image" for _, parts in s.turns for kind, _ in parts)
    error, kind = (bad[0], "image") if bad else (None, None)
    if error is None and max_images is not None and n_img > max_images:
        error, kind = (f"{n_img} images in one prompt; model.limit_mm_per_prompt allows "
                       f"{max_images}"), "too_many_images"
    over = merge(sampling, s.sampling)
    key = item_key(s.id, messages, images, over)
    if bad:
        key = hashlib.sha256((key + json.dumps(bad)).encode()).hexdigest()
    return Item(s.id, messages, images, s.expected, s.tags, key, s.metadata,
                s.scorer or scorer, error, over, kind)


def _prefetched(specs: Iterator[Spec], img: Images, batch: int = 64) -> Iterator[Spec]:
    """Specs in order, each batch's images probed in parallel before it is planned."""
    while chunk := list(itertools.islice(specs, batch)):
        img.prefetch([(v, s.base, s.where) for s in chunk for _, parts in s.turns
                      for k, v in parts if k == "image"])
        yield from chunk


def _progress(show: bool = True) -> Any:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from runner.console import console

    return Progress(SpinnerColumn(), TextColumn("{task.description}: {task.completed} items"),
                    TimeElapsedColumn(), console=console, transient=True, disable=not show)


def set_root(name: str, root: str | Path = "prompts") -> Path:
    """The folder a set's images must stay in, without planning it."""
    return read_set(find_set(name, root))[0].root


def load_set(name: str, root: str | Path = "prompts", system: str | None = None,
             limit: int | None = None, *, images: ImageOptions | None = None,
             max_images: int | None = None, cache: Path | None = None,
             show: bool = True) -> Plan:
    """Plan a set: items in file order, the first `limit` only; images checked and hashed.
    `cache`: the store's cache folder (runner/plan/images.py), None for a temporary one; `show`:
    a progress line (off while the engine's start is on screen)."""
    f = find_set(name, root)
    opts = images or ImageOptions()
    pc = PlanCache(cache, f, {"system": system, "limit": limit, "images": astuple(opts),
                              "max_images": max_images}, Image) if cache else None
    if pc is not None and (hit := pc.load()) is not None:
        return _cached(hit)
    inputs = Inputs()  # what the plan reads, each file stat'ed before it is read
    with gc_paused():
        plan = _plan(f, system, limit, opts, max_images, cache, show, inputs)
    if pc is not None:
        pc.keep({"name": plan.name, "file": plan.file, "root": plan.root,
                 "format": plan.format, "ignored": plan.ignored}, plan.items, inputs)
        plan.cache = pc
    return plan


def _cached(e: Entry) -> Plan:
    """A plan from the plan cache: stub items (id, key, error), the rest filled on first use."""
    items = []
    with gc_paused():
        for i, (iid, key) in enumerate(zip(e.ids, e.keys, strict=True)):
            it = object.__new__(Item)
            it.__dict__.update(id=iid, key=key, error=None, error_kind=None, _fill=e.fill)
            if i in e.errors:
                it.error, it.error_kind = e.errors[i]
            items.append(it)
    return Plan(items=items, **e.plan)


def _plan(f: Path, system: str | None, limit: int | None, opts: ImageOptions,
          max_images: int | None, cache: Path | None, show: bool, reads: Inputs) -> Plan:
    info, specs = read_set(f, reads)
    img = Images(info.root, opts, cache, reads)
    system = system or info.system
    items: list[Item] = []
    seen: dict[str, str] = {}
    ignored: dict[str, int] = {}
    # image preparation (checking, hashing, converting), under the configured bomb guard
    with pixel_limit(opts.max_image_pixels), _progress(show) as progress:
        task = progress.add_task(f"preparing {f.name}", total=None)
        for s in _prefetched(take(specs, limit), img):  # a stream: items stay, pixels do not
            if s.id in seen:
                raise UserError(f"{s.where}: duplicate item id '{s.id}' (first at "
                                f"{seen[s.id]}); ids must be unique.")
            seen[s.id] = s.where.split(": ")[0] if " line " in s.where else s.where
            items.append(_item(s, img, system, info.scorer, max_images, info.sampling))
            for k in s.ignored:
                ignored[k] = ignored.get(k, 0) + 1
            progress.advance(task)
    if not items:
        raise UserError(f"{f}: no items.")
    return Plan(info.name, info.file, info.root, items, info.format, ignored, img)


def load_plan(cfg: Any, show: bool = True) -> Plan:
    """The plan for a run config: `prompts.*` options and the model's image limit applied."""
    p, m = cfg.prompts, cfg.model
    lim = m.get("limit_mm_per_prompt") or {}
    opts = ImageOptions(bool(p.get("allow_remote", False)),
                        int(p.get("max_image_pixels") or ImageOptions.max_image_pixels),
                        p.get("max_image_size"))
    plan = load_set(p.name, p.root, p.system, p.limit, images=opts, max_images=lim.get("image"),
                    cache=Path(cfg.store.root) / ".cache", show=show)
    check_errors(plan.items, p.get("on_item_error", "skip"))
    plan.whole = [(it.id, it.key) for it in plan.items]
    if cfg.shard.count > 1:  # this shard's items (the plan cache keeps the whole set's)
        plan.items = [it for it in plan.items if in_shard(it.key, cfg.shard)]
    return plan


def check_errors(items: Iterable[Item], policy: str = "skip") -> None:
    """`prompts.on_item_error`: skip (store bad items as errors, run the rest) or fail."""
    if policy not in ("skip", "fail"):
        raise UserError(f"prompts.on_item_error must be skip or fail, not '{policy}'.")
    if policy == "fail":
        for it in items:
            if it.error:
                raise UserError(f"Item '{it.id}': {it.error} (prompts.on_item_error=fail; "
                                "set it to skip to store such items as errors and go on).")


def in_shard(key: str, shard: Any) -> bool:
    """Deterministic split by item key: stable when items are added or reordered."""
    if not 0 <= shard.index < shard.count:
        raise UserError(f"shard.index={shard.index} must be in [0, shard.count={shard.count}).")
    return int(key[:12], 16) % shard.count == shard.index
