"""Report thumbnails: one ≤160 px image per distinct original, cached in the store by the
original's sha256 (`<store>/.cache/thumbs/`), so rebuilding a report recomputes none."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from runner.files import atomic_write

THUMB = 160  # px, longest side
QUALITY = 55  # WebP; measured: ~2.2 KB for a 160x120 photo-like thumbnail (bench/report_scale)
PNG_OK = 2000  # bytes: a few-colour thumbnail this small stays PNG even if WebP is smaller
EXTS = (".png", ".webp")
_HEX = re.compile(r"[0-9a-f]{64}")


def cache_key(sha: str) -> str:
    """A file-name-safe cache key: the image's sha256, or a digest of whatever stands in."""
    return sha if _HEX.fullmatch(sha) else hashlib.sha256(sha.encode()).hexdigest()


def render(file: str | Path) -> tuple[bytes, str] | None:
    """(bytes, extension) of a thumbnail, or None if unreadable. WebP for photos (a third
    smaller than JPEG at the same look); PNG for few-colour images (charts, screenshots, line
    art: sharp) unless it is large (a grey photo also has at most 256 colours)."""
    try:
        with Image.open(file) as im:
            im.draft("RGB", (THUMB * 2, THUMB * 2))  # JPEG: decode at reduced scale (fast)
            im.thumbnail((THUMB, THUMB))
            alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            im = im.convert("RGBA" if alpha else "RGB")
            webp = io.BytesIO()
            im.save(webp, "WEBP", quality=QUALITY)
            if im.getcolors(256) is None:
                return webp.getvalue(), ".webp"
            png = io.BytesIO()  # few colours: a chart (PNG keeps it sharp) or a grey photo
            im.save(png, "PNG", optimize=True)
            if png.tell() <= max(2 * webp.tell(), PNG_OK):
                return png.getvalue(), ".png"
            return webp.getvalue(), ".webp"
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _listing(cache: Path) -> dict[str, str]:
    """Cached thumbnails by key: one directory read, not a stat per image (and strings, not
    Paths: at 100k images pathlib alone costs a second)."""
    try:
        return {e.name.rsplit(".", 1)[0]: e.path for e in os.scandir(cache)
                if e.name.endswith(EXTS)}
    except FileNotFoundError:
        return {}


def _make(job: tuple[Path, str | Path, str]) -> str | None:
    cache, file, key = job
    got = render(file)
    if got is None:
        return None  # not cached: the set folder may be fixed before the next build
    data, ext = got
    dest = cache / f"{key}{ext}"
    atomic_write(dest, data, sync=False)  # a cache: losing it costs a recompute only
    return str(dest)


def thumbnails(cache: Path, wanted: Mapping[str, str | Path]) -> dict[str, str | None]:
    """The cached thumbnail of each {key: original file}, making the missing ones (in a
    process pool when there are many: decoding dominates a cold build)."""
    have = _listing(cache)
    out: dict[str, str | None] = {k: have.get(k) for k in wanted}
    if all(out.values()):
        return out
    try:
        cache.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache, os.W_OK)
    except OSError:
        writable = False
    if not writable:  # a read-only store (someone else's runs): a cache of the user's own
        cache = Path(tempfile.gettempdir()) / f"pixtral-runner-thumbs-{os.getuid()}"
        cache.mkdir(parents=True, exist_ok=True)
        have = _listing(cache)
        out = {k: p or have.get(k) for k, p in out.items()}
    todo = [(cache, f, k) for k, f in wanted.items() if out[k] is None]
    workers = min(os.cpu_count() or 1, 8)
    if len(todo) < 200 or workers == 1:
        made = [_make(j) for j in todo]
    else:
        with ProcessPoolExecutor(workers) as pool:
            made = list(pool.map(_make, todo, chunksize=64))
    for (_, _, k), p in zip(todo, made, strict=True):
        out[k] = p
    return out
