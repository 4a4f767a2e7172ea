"""Benchmark rows -> the requests Mistral's evaluation harness sends (mistral-evals,
eval/tasks/<bench>.py; the prompts, sampling and metrics are data in harness.yaml).

Each function turns one source row into items: a chat (`messages`, each turn's `content` a list
of text and image parts in the harness's order), `expected` (a reference or a list of them),
and `metadata` for breakdowns. Images go through `Images`: stored once by content."""

from __future__ import annotations

import ast
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from runner.benchmarks.sources import image_bytes
from runner.errors import UserError
from runner.files import atomic_write

PROTOCOL: dict[str, dict[str, Any]] = yaml.safe_load(
    (Path(__file__).with_name("harness.yaml")).read_text(encoding="utf-8"))

Item = dict[str, Any]


class Images:
    """Content-addressed: <out>/images/<sha256[:20]>.<ext>, each distinct image decoded once
    (checked readable) and written once, whatever the number of items naming it. The bytes
    are the source's own: never re-encoded."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "images"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seen: dict[str, str] = {}

    def put(self, value: Any, base: Path, where: str) -> dict[str, Any]:
        data = image_bytes(value, base, where)
        sha = hashlib.sha256(data).hexdigest()
        name = self.seen.get(sha)
        if name is None:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    fmt = (im.format or "png").lower()
            except (UnidentifiedImageError, OSError):
                raise UserError(f"{where}: not a readable image.") from None
            name = f"images/{sha[:20]}.{'jpg' if fmt == 'jpeg' else fmt}"
            f = self.dir.parent / name
            if not f.exists():
                atomic_write(f, data)  # a kill mid-write leaves no truncated image
            self.seen[sha] = name
        return {"type": "image_url", "image_url": {"url": name}}


def text(t: str) -> dict[str, str]:
    return {"type": "text", "text": t}


def _user(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": parts}]


def _base(row: dict[str, Any]) -> Path:
    return Path(row.get("_base", "."))


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: row[k] for k in keys if row.get(k) not in (None, "", [])}


def mmmu(row: dict[str, Any], n: int, img: Images, constrain: bool = False) -> Iterator[Item]:
    """The question (and `A. …` option lines for multiple choice), split at `<image k>`
    (inside the options too), chunks that are only whitespace dropped, the prompt appended to
    the last text chunk (or as a chunk of its own after a trailing image)."""
    rid = str(row.get("id") or f"mmmu_{n}")
    where = f"mmmu row '{rid}'"
    prompt = PROTOCOL["mmmu"]["prompt"]
    q = str(row.get("question") or "")
    meta = _pick(row, ("subfield", "question_type", "topic_difficulty", "img_type"))
    choices: list[str] = []
    if row.get("question_type") == "multiple-choice":
        raw = row.get("options")
        try:
            choices = [str(c) for c in (ast.literal_eval(raw) if isinstance(raw, str) else raw)]
        except (ValueError, SyntaxError, TypeError):
            raise UserError(f"{where}: options {str(raw)[:60]!r} is not a list.") from None
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        q = q + "\n" + "\n".join(f"{c}. {o}" for c, o in zip(letters, choices, strict=True))
        meta["options"] = choices
    parts: list[dict[str, Any]] = []
    for chunk in re.split(r"(<image \d+>)", q):
        if not chunk.strip():
            continue
        m = re.fullmatch(r"<image (\d+)>", chunk)
        if m:
            k = int(m.group(1))
            parts.append(img.put(row.get(f"image_{k}"), _base(row), f"{where} image_{k}"))
        else:
            parts.append(text(chunk))
    if parts and parts[-1]["type"] == "text":
        parts[-1] = text(parts[-1]["text"] + "\n" + prompt)
    else:
        parts.append(text(prompt))
    ans = str(row.get("answer", ""))
    try:
        expected = [str(a) for a in ast.literal_eval(ans)] if "[" in ans else [ans]
    except (ValueError, SyntaxError):
        expected = [ans]
    item: Item = {"id": rid, "messages": _user(parts), "expected": expected,
                  "tags": [t for t in (re.sub(r"^(dev|validation|test)_|_\d+$", "", rid),
                                       row.get("subfield")) if t], "metadata": meta}
    if constrain and choices:  # the answer limited to the option letters (not the harness's)
        item["sampling"] = {"structured_outputs": {"choice": [chr(65 + i)
                                                              for i in range(len(choices))]}}
    yield item


def mathvista(row: dict[str, Any], n: int, img: Images, **_: Any) -> Iterator[Item]:
    """Image, then query + "\\n" + prompt; a multiple-choice answer becomes its letter."""
    rid = str(row.get("pid") or f"mathvista_{n}")
    choices = row.get("choices") or []
    answer = str(row.get("answer", ""))
    if choices:
        if answer not in choices:
            raise UserError(f"mathvista row '{rid}': answer {answer!r} is not a choice.")
        answer = chr(ord("A") + list(choices).index(answer))
    meta = _pick(row, ("question_type", "answer_type", "precision", "unit"))
    if isinstance(row.get("metadata"), dict):
        meta.update(_pick(row["metadata"], ("category", "task", "context", "grade", "source",
                                             "language", "skills")))
    parts = [img.put(row.get("decoded_image") or row.get("image"), _base(row),
                     f"mathvista row '{rid}'"),
             text(str(row["query"]) + "\n" + PROTOCOL["mathvista"]["prompt"])]
    yield {"id": rid, "messages": _user(parts), "expected": answer, "metadata": meta}


def chartqa(row: dict[str, Any], n: int, img: Images, **_: Any) -> Iterator[Item]:
    rid = f"chartqa_{n:05d}"
    parts = [img.put(row.get("image"), _base(row), f"chartqa row {n}"),
             text(str(row["question"]) + "\n" + PROTOCOL["chartqa"]["prompt"])]
    ans = row.get("answer")
    meta = {"type": row["type"]} if row.get("type") else {}  # human_test | augmented_test
    yield {"id": rid, "messages": _user(parts),
           "expected": [str(a) for a in ans] if isinstance(ans, list) else str(ans),
           "metadata": meta}


def docvqa(row: dict[str, Any], n: int, img: Images, **_: Any) -> Iterator[Item]:
    rid = str(row.get("questionId") or f"docvqa_{n}")
    parts = [img.put(row.get("image"), _base(row), f"docvqa row '{rid}'"),
             text(str(row["question"]) + "\n" + PROTOCOL["docvqa"]["prompt"])]
    yield {"id": rid, "messages": _user(parts),
           "expected": [str(a) for a in row.get("answers") or []],
           "metadata": _pick(row, ("question_types", "docId", "ucsf_document_id",
                                   "ucsf_document_page_no"))}


def _vqa_answers(raw: Any) -> list[str]:
    """VQAv2's answer objects -> their strings (a list of dicts, or `datasets`' dict of lists)."""
    if isinstance(raw, dict):
        return [str(a) for a in raw.get("answer", [])]
    return [str(a["answer"]) if isinstance(a, dict) else str(a) for a in raw or []]


def vqav2(row: dict[str, Any], n: int, img: Images, **_: Any) -> Iterator[Item]:
    rid = str(row.get("question_id") or f"vqav2_{n}")
    parts = [img.put(row.get("image"), _base(row), f"vqav2 row '{rid}'"),
             text(str(row["question"]) + "\n" + PROTOCOL["vqav2"]["prompt"])]
    yield {"id": rid, "messages": _user(parts), "expected": _vqa_answers(row.get("answers")),
           "metadata": _pick(row, ("question_type", "answer_type", "image_id",
                                   "multiple_choice_answer"))}


def _chat_turn(m: dict[str, Any], image: dict[str, Any] | None, where: str,
               img: Images, base: Path) -> dict[str, Any]:
    c = m.get("content")
    if m.get("role") == "assistant" or isinstance(c, str):
        return {"role": m.get("role"), "content": [text(str(c))]}
    parts = []
    for p in c or []:
        if p.get("type") == "image":  # the row's image (hub) or its image_path (the repo's)
            parts.append(image if image is not None else
                         img.put(p.get("image_path") or p.get("image"), base, where))
        else:
            parts.append(text(str(p.get("text", ""))))
    return {"role": "user", "content": parts}


def mm_mt_bench(row: dict[str, Any], n: int, img: Images, **_: Any) -> Iterator[Item]:
    """One item per user turn: the conversation up to it, earlier assistant turns being the
    reference answers; `expected` is this turn's reference answer."""
    where = f"mm_mt_bench row {n}"
    conv = row.get("conversation") or row.get("messages")
    msgs = json.loads(conv) if isinstance(conv, str) else conv
    if not isinstance(msgs, list) or not msgs:
        raise UserError(f"{where}: no conversation.")
    image = img.put(row["image"], _base(row), where) if row.get("image") else None
    turns = [_chat_turn(m, image, where, img, _base(row)) for m in msgs]
    rid = str(row.get("id") or f"mm_mt_bench_{n}")
    for i in range(0, len(msgs) - 1, 2):
        if msgs[i].get("role") != "user" or msgs[i + 1].get("role") != "assistant":
            raise UserError(f"{where}: turns must alternate user, assistant.")
        yield {"id": f"{rid}_turn{i // 2}", "messages": turns[: i + 1],
               "expected": str(msgs[i + 1]["content"]),
               "metadata": {"category": row.get("category"), "turn": i // 2}}


CONVERTERS: dict[str, Callable[..., Iterator[Item]]] = {
    "mmmu": mmmu, "mathvista": mathvista, "chartqa": chartqa, "docvqa": docvqa,
    "vqav2": vqav2, "mm_mt_bench": mm_mt_bench}
