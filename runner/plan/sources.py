"""Prompt set formats -> a stream of item specs (no images opened here).

- `items`:  YAML items (`set.yaml`): id, text/images or multi-turn messages, metadata, scorer.
- `images`: a folder or glob of images times one or more prompt templates (ids from file names).
- `jsonl`:  one YAML-style item per line, read as a stream.
- `batch`:  OpenAI Batch API / `vllm run-batch` input (custom_id, body.messages).

The format is detected from the file (`*.yaml` items, `*.jsonl` items or batch by the first
line) or declared in a set file (`format: images|jsonl|batch`, `file:`/`images:`).
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image as PILImage

from runner.errors import UserError
from runner.plan.sampling import check_override, from_batch_body

FORMATS = ("items", "images", "jsonl", "batch")
ITEM_KEYS = {"id", "text", "images", "system", "expected", "tags", "messages", "metadata",
             "scorer", "sampling"}
SET_KEYS = {"name", "format", "system", "scorer", "items", "file", "images", "templates", "root",
            "description", "sampling"}
Part = tuple[str, str]  # ("text", text) | ("image", reference as written)


@dataclass
class Spec:
    """One item as written, before images are resolved."""

    id: str
    where: str  # file and line (or item) for messages
    base: Path  # relative image paths resolve against it
    turns: list[tuple[str, list[Part]]]  # (role, parts)
    system: str | None = None
    expected: str | dict | list | None = None  # a mapping or list: for the `json` scorer
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    scorer: str | list[str] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # the item's override, checked
    ignored: list[str] = field(default_factory=list)  # batch body fields not honored


@dataclass
class SetInfo:
    name: str
    file: Path
    root: Path  # images must stay inside it
    format: str
    system: str | None = None
    scorer: str | list[str] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # the set's override, checked


def _yaml(f: Path) -> tuple[Any, yaml.Node | None]:
    """The document and its node tree (for item line numbers), parsed once."""
    try:
        loader = yaml.SafeLoader(f.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            return (loader.construct_document(node) if node else None), node
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{f}{line}: not valid YAML ({getattr(e, 'problem', e)}).") from None
    except UnicodeDecodeError:
        raise UserError(f"{f}: not UTF-8 text.") from None


def _item_lines(node: yaml.Node | None) -> list[int]:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == "items" and isinstance(v, yaml.SequenceNode):
                return [n.start_mark.line + 1 for n in v.value]
    return []


def _str(v: Any, what: str, where: str) -> str:
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return str(v)
    raise UserError(f"{where}: '{what}' must be a string, not {type(v).__name__}.")


def _scorer(v: Any, where: str) -> str | list[str]:
    """A scorer name, or a list of them (the harness scores a benchmark with several metrics;
    the first is the item's score)."""
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return list(v)
    if isinstance(v, list):
        raise UserError(f"{where}: 'scorer' must be a name or a non-empty list of names.")
    return _str(v, "scorer", where)


def spec_from_item(raw: Any, where: str, base: Path, reads: Any = None) -> Spec:
    """A YAML/JSONL item (id, text, images, messages, ...) -> Spec."""
    if not isinstance(raw, dict) or "id" not in raw:
        raise UserError(f"{where}: an item needs an 'id'.")
    iid = _str(raw["id"], "id", where)
    where = f"{where}: item '{iid}'"
    unknown = set(raw) - ITEM_KEYS
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"allowed: {', '.join(sorted(ITEM_KEYS))}.")

    def images(v: Any) -> list[Part]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise UserError(f"{where}: 'images' must be a list of paths or URLs.")
        return [("image", _str(p, "images", where)) for p in v]

    turns: list[tuple[str, list[Part]]] = []
    if "messages" in raw:  # multi-turn: each turn has role, text and optional images
        if not isinstance(raw["messages"], list) or not raw["messages"]:
            raise UserError(f"{where}: 'messages' must be a non-empty list of turns.")
        for t in raw["messages"]:
            if not isinstance(t, dict) or t.get("role") not in ("user", "assistant", "system"):
                raise UserError(f"{where}: each turn needs role user, assistant or system.")
            if "content" in t:  # OpenAI-style parts, in their order (interleaved images)
                turns.append((t["role"], _openai_parts(t["content"], where)))
                continue
            turns.append((t["role"], [("text", _str(t.get("text", ""), "text", where))]
                          + images(t.get("images"))))
    elif "text" in raw:
        turns.append(("user", [("text", _str(raw["text"], "text", where))]
                      + images(raw.get("images"))))
    else:
        raise UserError(f"{where}: needs 'text' (or 'messages').")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise UserError(f"{where}: 'metadata' must be a mapping.")
    tags = raw.get("tags") or []
    if not isinstance(tags, list):
        raise UserError(f"{where}: 'tags' must be a list.")
    exp, sc, sysp = raw.get("expected"), raw.get("scorer"), raw.get("system")
    return Spec(iid, where, base, turns,
                None if sysp is None else _str(sysp, "system", where),
                exp if exp is None or isinstance(exp, (dict, list)) else
                _str(exp, "expected", where), [str(t) for t in tags],
                meta, None if sc is None else _scorer(sc, where),
                check_override(raw.get("sampling"), where, base, reads))


def _openai_parts(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, list):
        raise UserError(f"{where}: message content must be a string or a list of parts.")
    parts: list[Part] = []
    for p in content:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            parts.append(("text", _str(p.get("text", ""), "text", where)))
        elif kind == "image_url":
            u = p.get("image_url")
            parts.append(("image", _str(u.get("url") if isinstance(u, dict) else u, "url", where)))
        else:
            raise UserError(f"{where}: unsupported content part type {kind!r}; "
                            "only 'text' and 'image_url' are.")
    return parts


def spec_from_batch(raw: Any, where: str, base: Path, reads: Any = None) -> Spec:
    """One OpenAI batch request line -> Spec. The body's sampling fields become the item's
    sampling override, as `vllm run-batch` honors them; the whole body stays in metadata."""
    if not isinstance(raw, dict) or "custom_id" not in raw:
        raise UserError(f"{where}: a batch request needs a 'custom_id'.")
    iid = _str(raw["custom_id"], "custom_id", where)
    where = f"{where}: request '{iid}'"
    body = raw.get("body")
    msgs = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise UserError(f"{where}: needs body.messages (a chat completion request).")
    turns = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
            raise UserError(f"{where}: each message needs role user, assistant or system.")
        turns.append((m["role"], _openai_parts(m.get("content", ""), where)))
    meta = {"body": {k: v for k, v in body.items() if k != "messages"}}
    over, ignored = from_batch_body(body, where, base, reads)
    return Spec(iid, where, base, turns, metadata=meta, sampling=over, ignored=ignored)


def _jsonl(f: Path, batch: bool, reads: Any) -> Iterator[Spec]:
    make = spec_from_batch if batch else spec_from_item
    with open(f, encoding="utf-8") as fh:  # a stream: one line in memory at a time
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except ValueError as e:
                raise UserError(f"{f} line {n}: not valid JSON ({e}).") from None
            yield make(raw, f"{f} line {n}", f.parent, reads)


def is_batch(f: Path) -> bool:
    with open(f, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError as e:
                    raise UserError(f"{f} line {n}: not valid JSON ({e}).") from None
                return isinstance(first, dict) and "custom_id" in first and "body" in first
    raise UserError(f"{f}: no items (the file is empty).")


def _folders(top: Path) -> Iterator[str]:
    """`top` and every folder under it, symlinked ones too (glob follows them), each once."""
    seen: set[str] = set()
    for d, subs, _ in os.walk(top, followlinks=True):
        if (real := os.path.realpath(d)) in seen:
            subs[:] = []
            continue
        seen.add(real)
        yield d


def _image_files(spec: str, f: Path, reads: Any) -> tuple[Path, list[Path]]:
    """A folder (every image in it, sorted) or a glob, relative to the set file; with the
    folder that ids are relative to (the glob's literal part)."""
    exts = {e for e, fmt in PILImage.registered_extensions().items() if fmt in PILImage.OPEN}
    p = f.parent / spec
    if any(c in spec for c in "*?["):
        parts = Path(spec).parts
        lit = next(i for i, x in enumerate(parts) if any(c in x for c in "*?["))
        top = f.parent.joinpath(*parts[:lit])
        if not top.is_dir():
            raise UserError(f"{f}: 'images: {spec}': the folder {top} does not exist.")
        if reads is not None:  # the plan cache checks every folder the glob may list
            for d in _folders(top):
                reads.note(d)
        files = [Path(x) for x in glob.glob(str(p), recursive=True)]
    elif p.is_dir():
        if reads is not None:  # its listing: a file added or removed changes its stat
            reads.note(p)
        top, files = p, list(p.iterdir())
    else:
        raise UserError(f"{f}: 'images: {spec}': the folder {p} does not exist "
                        "(give a folder or a glob like images/*.jpg).")
    files = sorted(x for x in files if x.suffix.lower() in exts and not x.name.startswith("."))
    if not files:
        raise UserError(f"{f}: 'images: {spec}' matches no image files.")
    return top, files


def _templates(doc: dict, f: Path, reads: Any) -> Iterator[Spec]:
    tpls = doc.get("templates")
    if not isinstance(tpls, list) or not tpls:
        raise UserError(f"{f}: format 'images' needs 'templates:', a list of prompts "
                        "(id, text; optional system, expected, scorer, tags, metadata).")
    specs = [spec_from_item(t, f"{f}: template #{n + 1}", f.parent, reads)
             for n, t in enumerate(tpls)]
    for s in specs:
        if len(s.turns) != 1 or any(k == "image" for k, _ in s.turns[0][1]):
            raise UserError(f"{s.where}: a template is one 'text' (the image is added).")
    top, files = _image_files(str(doc.get("images", "")), f, reads)
    for img in files:
        rel = os.path.relpath(img, f.parent)  # what the set would write; checked by Images
        stem = img.relative_to(top).with_suffix("").as_posix()
        for t in specs:
            text = t.turns[0][1][0][1].replace("{image}", rel).replace("{stem}", stem)
            yield Spec(stem if len(specs) == 1 else f"{stem}:{t.id}", f"{f}: image '{rel}'",
                       f.parent, [("user", [("text", text), ("image", rel)])],
                       t.system, t.expected, list(t.tags), dict(t.metadata), t.scorer,
                       dict(t.sampling))


def read_set(f: Path, reads: Any = None) -> tuple[SetInfo, Iterator[Spec]]:
    """The set's description and a lazy stream of its items. `reads`: the plan's record of
    what it read (runner/plan/cache.py Inputs), told of every file and folder read here."""
    if reads is not None:
        reads.note(f)
    if f.suffix == ".jsonl":
        fmt = "batch" if is_batch(f) else "jsonl"
        return SetInfo(f.stem, f, f.parent.resolve(), fmt), _jsonl(f, fmt == "batch", reads)
    doc, node = _yaml(f)
    if not isinstance(doc, dict):
        raise UserError(f"{f}: no items (expected a top-level 'items:' list).")
    unknown = set(doc) - SET_KEYS
    if unknown:
        raise UserError(f"{f}: unknown set key(s) {', '.join(sorted(map(str, unknown)))}; "
                        f"allowed: {', '.join(sorted(SET_KEYS))}.")
    fmt = doc.get("format") or ("images" if "templates" in doc else
                                "jsonl" if "file" in doc else "items")
    if fmt not in FORMATS:
        raise UserError(f"{f}: format '{fmt}' is not one of {', '.join(FORMATS)}.")
    root = (f.parent / str(doc.get("root", "."))).resolve()
    if not root.is_dir():
        raise UserError(f"{f}: image root 'root: {doc['root']}' is not a folder ({root}).")
    info = SetInfo(str(doc.get("name", f.parent.name)), f, root, fmt,
                   doc.get("system"),
                   None if doc.get("scorer") is None else _scorer(doc["scorer"], str(f)),
                   check_override(doc.get("sampling"), str(f), f.parent, reads))
    if fmt == "items":
        raw = doc.get("items")
        if not isinstance(raw, list) or not raw:
            raise UserError(f"{f}: no items (expected a top-level 'items:' list).")
        lines = _item_lines(node)
        where = (lambda n: f"{f} line {lines[n]}") if len(lines) == len(raw) else \
            (lambda n: f"{f}: item #{n + 1}")
        return info, (spec_from_item(r, where(n), f.parent, reads)
                      for n, r in enumerate(raw))
    if fmt == "images":
        return info, _templates(doc, f, reads)
    data = f.parent / str(doc.get("file", ""))
    if not doc.get("file") or not data.is_file():
        raise UserError(f"{f}: format '{fmt}' needs 'file:', a JSONL file next to it "
                        f"({data} not found).")
    if reads is not None:
        reads.note(data)
    batch = fmt == "batch" or is_batch(data)
    info.format = "batch" if batch else "jsonl"
    return info, _jsonl(data, batch, reads)


_FILE = re.compile(r"""^file:[ \t]*["']?([^"'#\n]+)""", re.M)  # a set's data file


def image_base(set_file: Path | None) -> Path | None:
    """Where a set's image paths resolve, as read_set gives each Spec its base: the folder of
    the file holding the items (a YAML set's own, or that of the JSONL its `file:` names);
    None if the set is gone. Read without parsing the set (a 3,000-item YAML took 2.5 s to
    parse here; a top-level `file:` line is one regex). For the report's images."""
    if set_file is None:
        return None
    if set_file.suffix != ".jsonl":
        try:
            m = _FILE.search(set_file.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return None
        if m:
            return (set_file.parent / m.group(1).strip()).parent
    return set_file.parent



def take(specs: Iterator[Spec], limit: int | None) -> Iterator[Spec]:
    return itertools.islice(specs, limit) if limit else specs
