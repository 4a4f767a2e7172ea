"""Stage 1: a prompt set on disk -> planned items (messages, images, content keys).

No model is loaded here. Images are referenced by path (vLLM reads them itself through
`allowed_local_media_path`); each image is hashed once so an item's key covers its pixels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.errors import UserError

SET_FILE = "set.yaml"


@dataclass(frozen=True)
class Image:
    path: str  # as written in the set, relative to its folder
    file: Path  # resolved, inside the set's root
    sha256: str


@dataclass
class Item:
    id: str
    messages: list[dict[str, Any]]  # OpenAI chat format; image parts carry a file:// URL
    images: list[Image]
    expected: str | None = None
    tags: list[str] = field(default_factory=list)
    key: str = ""  # digest of the content, image bytes included

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


@dataclass
class Plan:
    name: str
    file: Path
    root: Path  # images must stay inside it
    items: list[Item]


def find_set(name: str, root: str | Path) -> Path:
    """`name` is a set under `root` (<root>/<name>/set.yaml) or a path to a set file."""
    cand = [Path(root) / name / SET_FILE, Path(root) / f"{name}.yaml", Path(name)]
    for c in cand:
        if c.is_file():
            return c.resolve()
    known = sorted(p.parent.name for p in Path(root).glob(f"*/{SET_FILE}"))
    raise UserError(f"Unknown prompt set '{name}': no {cand[0]} or {cand[1]}; "
                    f"known sets in {root}/: {', '.join(known) or 'none'} (set prompts.name=...).")


class ImageHasher:
    """Hashes each image file once, however many items use it."""

    def __init__(self, root: Path):
        self.root = root
        self._seen: dict[Path, str] = {}

    def __call__(self, rel: str, where: str) -> Image:
        f = (self.root / rel).resolve()
        if not f.is_relative_to(self.root):
            raise UserError(f"{where}: image '{rel}' is outside the set's folder {self.root}; "
                            "keep images inside it.")
        if not f.is_file():
            raise UserError(f"{where}: image '{rel}' not found (looked at {f}).")
        if f not in self._seen:
            self._seen[f] = hashlib.sha256(f.read_bytes()).hexdigest()
        return Image(rel, f, self._seen[f])


def _content(text: str, images: list[Image]) -> str | list[dict[str, Any]]:
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": im.file.as_uri()}} for im in images]
    return parts


def item_key(item_id: str, messages: list[dict], images: Iterable[Image]) -> str:
    """Digest of what the model sees: the messages with each image replaced by its sha256."""
    by_uri = {im.file.as_uri(): im.sha256 for im in images}

    def canon(c: Any) -> Any:
        if isinstance(c, list):
            return [{"image": by_uri[p["image_url"]["url"]]} if p["type"] == "image_url" else p
                    for p in c]
        return c

    body = [{"role": m["role"], "content": canon(m["content"])} for m in messages]
    blob = json.dumps({"id": item_id, "messages": body}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _item(raw: dict, n: int, where: str, img: ImageHasher, system: str | None) -> Item:
    if not isinstance(raw, dict) or "id" not in raw:
        raise UserError(f"{where}: item #{n + 1} needs an 'id'.")
    iid = str(raw["id"])
    where = f"{where}: item '{iid}'"
    unknown = set(raw) - {"id", "text", "images", "system", "expected", "tags", "messages"}
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                        "allowed: id, text, images, system, expected, tags, messages.")
    images: list[Image] = []
    messages: list[dict[str, Any]] = []
    sys_prompt = raw.get("system", system)
    if sys_prompt:
        messages.append({"role": "system", "content": sys_prompt})
    if "messages" in raw:  # multi-turn: each turn has role, text and optional images
        for t in raw["messages"]:
            ims = [img(p, where) for p in t.get("images", [])]
            images += ims
            messages.append({"role": t["role"], "content": _content(t.get("text", ""), ims)})
    elif "text" in raw:
        images = [img(p, where) for p in raw.get("images") or []]
        messages.append({"role": "user", "content": _content(str(raw["text"]), images)})
    else:
        raise UserError(f"{where}: needs 'text' (or 'messages').")
    exp = raw.get("expected")
    return Item(iid, messages, images, None if exp is None else str(exp),
                list(raw.get("tags") or []), item_key(iid, messages, images))


def load_set(name: str, root: str | Path = "prompts", system: str | None = None,
             limit: int | None = None) -> Plan:
    f = find_set(name, root)
    try:
        doc = yaml.safe_load(f.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{f}{line}: not valid YAML ({getattr(e, 'problem', e)}).") from None
    raw = doc.get("items") if isinstance(doc, dict) else None
    if not raw:
        raise UserError(f"{f}: no items (expected a top-level 'items:' list).")
    img = ImageHasher(f.parent)
    system = system or doc.get("system")
    items = [_item(r, n, str(f), img, system) for n, r in enumerate(raw[:limit] if limit else raw)]
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise UserError(f"{f}: duplicate item id '{it.id}'; ids must be unique.")
        seen.add(it.id)
    return Plan(doc.get("name", f.parent.name), f, f.parent, items)
