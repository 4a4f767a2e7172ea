"""MMMU-format export -> a prompt set folder (docs/results.md, "MMMU-format exports").

Records (JSONL lines, a JSON list, or a folder of those) carry id, question, options (a list or
its string repr), answer, image_1..image_7 (a file path, base64, a data: URL, or
{"bytes"/"path"}) and optionally subfield, question_type, topic_difficulty. Images are copied
into <out>/images/; options go under each item's `metadata` so the `choice` scorer can match
an answer that names the option's text. No benchmark data ships with the runner.
"""

from __future__ import annotations

import argparse
import ast
import base64
import binascii
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from runner.errors import UserError
from runner.files import atomic_write

MAX_IMAGES = 7
CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."  # MMMU's
OPEN_PROMPT = "Answer the question using a single word or phrase."  # MMMU's, open questions


def read_records(src: Path) -> list[dict[str, Any]]:
    """Records from a .jsonl/.json file, or every such file in a folder (sorted by name)."""
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix in (".jsonl", ".json"))
        return [r for f in files for r in read_records(f)]
    text = src.read_text()
    try:
        if src.suffix == ".jsonl":
            recs: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            recs = json.loads(text)
    except ValueError as e:
        raise UserError(f"{src}: not valid JSON ({e}).") from None
    if isinstance(recs, dict):  # {"data": [...]} or a datasets-server page {"rows": [{"row"}]}
        recs = recs.get("data") or [r.get("row", r) for r in recs.get("rows", [])]
    if not isinstance(recs, list) or not all(isinstance(r, dict) for r in recs):
        raise UserError(f"{src}: expected MMMU records (objects), one per line or in a list.")
    for r in recs:
        r.setdefault("_src", str(src.parent))
    return recs


def parse_options(raw: Any, where: str) -> list[str]:
    if raw in (None, "", "[]"):
        return []
    if isinstance(raw, str):
        try:
            raw = ast.literal_eval(raw)  # MMMU stores "['a', 'b']"
        except (ValueError, SyntaxError):
            raise UserError(f"{where}: options {raw[:60]!r} is not a list.") from None
    if not isinstance(raw, list):
        raise UserError(f"{where}: options must be a list (or its string repr).")
    return [str(o) for o in raw]


def image_bytes(value: Any, base: Path, where: str) -> bytes:
    """A path (relative to the export's folder), base64, a data: URL, bytes or {bytes, path}."""
    if isinstance(value, dict):
        b = value.get("bytes")
        value = (bytes(b) if isinstance(b, list) else b) if b else value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str):
        raise UserError(f"{where}: unsupported image value of type {type(value).__name__}.")
    if len(value) < 1024:
        p = Path(value) if Path(value).is_absolute() else base / value
        if p.is_file():
            return p.read_bytes()
    try:
        return base64.b64decode(value.split(",", 1)[1] if value.startswith("data:") else value,
                                validate=True)
    except (binascii.Error, ValueError, IndexError):
        raise UserError(f"{where}: {value[:60]!r} is neither an image file nor base64.") from None


def save_image(data: bytes, folder: Path, stem: str, where: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "png").lower()
    except (UnidentifiedImageError, OSError):
        raise UserError(f"{where}: not a readable image.") from None
    name = f"images/{stem}.{'jpg' if fmt == 'jpeg' else fmt}"
    (folder / name).write_bytes(data)
    return name


def subject(rec_id: str) -> str:
    """validation_Art_Theory_12 -> Art_Theory."""
    return re.sub(r"^(dev|validation|test)_|_\d+$", "", rec_id)


def convert_record(rec: dict[str, Any], n: int, out: Path,
                   constrain: bool = False) -> dict[str, Any]:
    """One MMMU record -> a set item; `constrain`: a multiple-choice answer is constrained to
    its option letters (a per-item `sampling.structured_outputs.choice`)."""
    rid = str(rec.get("id") or f"mmmu_{n}")
    where = f"record '{rid}'"
    if not rec.get("question"):
        raise UserError(f"{where}: no 'question'.")
    options = parse_options(rec.get("options"), where)
    stem = re.sub(r"[^\w.-]", "_", rid)
    images = []
    for k in range(1, MAX_IMAGES + 1):
        v = rec.get(f"image_{k}")
        if v not in (None, ""):
            at = f"{where} image_{k}"
            data = image_bytes(v, Path(rec.get("_src", ".")), at)
            images.append(save_image(data, out, f"{stem}_{k}", at))
    answer: Any = rec.get("answer")
    if isinstance(answer, str) and answer.startswith("["):  # open questions: "['1.5', '3/2']"
        try:
            answer = ast.literal_eval(answer)
        except (ValueError, SyntaxError):
            pass
    answers = [str(a) for a in answer] if isinstance(answer, list) else [str(answer or "")]
    meta: dict[str, Any] = {k: rec[k] for k in ("subfield", "question_type", "topic_difficulty",
                                                 "img_type") if rec.get(k) not in (None, "")}
    item: dict[str, Any] = {"id": rid}
    if options:
        letters = [chr(ord("A") + i) for i in range(len(options))]
        body = "\n".join(f"{c}. {o}" for c, o in zip(letters, options, strict=True))
        item["text"] = f"{rec['question']}\n{body}\n{CHOICE_PROMPT}"
        meta["options"] = options
        if constrain:
            item["sampling"] = {"structured_outputs": {"choice": letters}}
    else:  # open question: MMMU compares numbers (to 2 decimals) or looks for the string
        item["text"] = f"{rec['question']}\n{OPEN_PROMPT}"
        numeric = re.fullmatch(r"-?[\d,]*\.?\d+", answers[0].strip()) is not None
        item["scorer"] = "numeric:0.01" if numeric else "contains"
        if len(answers) > 1:
            meta["answers"] = answers
    if images:
        item["images"] = images
    item["expected"] = answers[0]
    item["tags"] = [t for t in (subject(rid), rec.get("subfield")) if t]
    item["metadata"] = meta
    return item


def convert(sources: list[Path], out: Path, name: str | None = None,
            limit: int | None = None, force: bool = False, constrain: bool = False) -> Path:
    """Write <out>/set.yaml and <out>/images/; returns the set file."""
    set_file = out / "set.yaml"
    if set_file.exists() and not force:
        raise UserError(f"{set_file} exists; pick another --out or pass --force.")
    recs = [r for s in sources for r in read_records(Path(s))][:limit]
    if not recs:
        raise UserError("no records found in " + ", ".join(map(str, sources)) + ".")
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = [convert_record(r, n, out, constrain) for n, r in enumerate(recs)]
    ids = [i["id"] for i in items]
    if len(set(ids)) != len(ids):
        raise UserError("duplicate record ids in the export; ids must be unique.")
    doc = {"name": name or out.name, "scorer": "choice", "items": items}
    atomic_write(set_file, "# Converted from an MMMU-format export by "
                 "`python -m runner.benchmarks.mmmu`.\n"
                 + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1000))
    return set_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m runner.benchmarks.mmmu",
                                 description="Convert an MMMU-format export into a prompt set.")
    ap.add_argument("sources", nargs="+", type=Path, help=".jsonl/.json files or folders")
    ap.add_argument("--out", type=Path, required=True, help="the set folder, e.g. prompts/mmmu")
    ap.add_argument("--name", help="set name (default: the folder's name)")
    ap.add_argument("--limit", type=int, help="first N records only")
    ap.add_argument("--force", action="store_true", help="overwrite an existing set.yaml")
    ap.add_argument("--constrain", action="store_true",
                    help="constrain multiple-choice answers to the option letters")
    a = ap.parse_args(argv)
    try:
        f = convert(a.sources, a.out, a.name, a.limit, a.force, a.constrain)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    n = len(yaml.safe_load(f.read_text())["items"])
    print(f"{f}: {n} items; run it with prompts.name={a.out.name} prompts.root={a.out.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
