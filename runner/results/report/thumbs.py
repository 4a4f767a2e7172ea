"""Report thumbnails: one ≤160 px image per distinct original, cached in the store by the
original's sha256 (`<store>/.cache/thumbs/`), so rebuilding a report recomputes none."""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from runner.files import atomic_write

THUMB = 160  # px, longest side
QUALITY = 55  # WebP, for a thumbnail that fits BUDGET at it (charts, plain photos)
# Bytes: a thumbnail over it is re-encoded at a lower quality. Inlined in a one-file report
# as base64 (4/3 of it) beside a ~550 B row, that keeps an image item under 3 KB.
BUDGET = 1800
MIN_QUALITY = 10  # past this a thumbnail stays over BUDGET rather than turn to mush
METHOD = 2  # libwebp effort for a re-encode; its default 4: ~7% fewer bytes, 1.4-2x the time
VERSION = 2  # in the cache's file names: bump when the encoding changes (old ones are ignored)
_TAG = f"-v{VERSION}"
EXTS = (".png", ".webp")
_HEX = re.compile(r"[0-9a-f]{64}")


def cache_key(sha: str) -> str:
    """A file-name-safe cache key: the image's sha256, or a digest of whatever stands in."""
    return sha if _HEX.fullmatch(sha) else hashlib.sha256(sha.encode()).hexdigest()


def _encode(im: Image.Image, quality: int, method: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "WEBP", quality=quality, method=method)
    return buf.getvalue()


def _webp(im: Image.Image) -> bytes:
    """WebP at QUALITY if that fits BUDGET, else at the quality predicted to fit. The first
    try uses libwebp's fastest method (0.5 ms, not 1.1): kept if it fits, else it only
    measures how far over the budget the image is."""
    data = _encode(im, QUALITY, 0)
    q, size = QUALITY, len(data) * 0.86  # measured: METHOD makes ~14% fewer bytes than 0
    while len(data) > BUDGET and q > MIN_QUALITY:
        # measured (bench/report_scale photos): ~1.2% fewer bytes per quality step; aiming
        # 5% under the budget, one more encode nearly always fits
        q = max(MIN_QUALITY, min(q - 5, int(q - (1 - 0.95 * BUDGET / size) / 0.012)))
        data = _encode(im, q, METHOD)
        size = len(data)
    return data


def render(file: str | Path) -> tuple[bytes, str] | None:
    """(bytes, extension) of a thumbnail, or None if unreadable. WebP for photos (a third
    smaller than JPEG at the same look); PNG for few-colour images (charts, screenshots, line
    art: sharp) if it fits BUDGET (a grey photo also has at most 256 colours)."""
    try:
        with Image.open(file) as im:
            # reducing_gap=1: a JPEG is decoded at the smallest DCT scale still >= THUMB
            # (a 1024 px photo: 1.5 ms, not 2.5); bilinear: a little softer than bicubic,
            # faster, and ~10% fewer bytes
            im.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR, reducing_gap=1.0)
            ImageOps.exif_transpose(im, in_place=True)  # upright, as the browser and the model
            alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            im = im.convert("RGBA" if alpha else "RGB")
            webp = _webp(im)
            if im.getcolors(256) is None:
                return webp, ".webp"
            png = io.BytesIO()  # few colours: a chart (PNG keeps it sharp) or a grey photo
            im.save(png, "PNG", optimize=True)
            if png.tell() <= BUDGET:
                return png.getvalue(), ".png"
            return webp, ".webp"
    except Exception:  # noqa: BLE001 - any one image (a decompression bomb is no OSError)
        return None  # leaves that image without a thumbnail, never the others


def _listing(cache: Path) -> dict[str, str]:
    """Cached thumbnails by key: one directory read, not a stat per image (and strings, not
    Paths: at 100k images pathlib alone costs a second)."""
    try:
        return {e.name.rsplit(".", 1)[0].removesuffix(_TAG): e.path for e in os.scandir(cache)
                if e.name.endswith(EXTS) and _TAG + "." in e.name}
    except FileNotFoundError:
        return {}


def _make(job: tuple[Path, str | Path, str]) -> str | None:
    cache, file, key = job
    got = render(file)
    if got is None:
        return None  # not cached: the set folder may be fixed before the next build
    data, ext = got
    dest = cache / f"{key}{_TAG}{ext}"
    atomic_write(dest, data, sync=False)  # a cache: losing it costs a recompute only
    return str(dest)


def thumbnails(cache: Path, wanted: Mapping[str, str | Path],
               workers: int | None = None) -> dict[str, str | None]:
    """The cached thumbnail of each {key: original file}, making the missing ones (in a
    pool of `workers` processes, default one per core up to 8, when there are many:
    decoding and encoding are a cold build's time)."""
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
    workers = workers or min(os.cpu_count() or 1, 8)
    if len(todo) < 200 or workers == 1:
        made = [_make(j) for j in todo]
    else:
        with ProcessPoolExecutor(workers) as pool:
            made = list(pool.map(_make, todo, chunksize=64))
    for (_, _, k), p in zip(todo, made, strict=True):
        out[k] = p
    return out


def ensure(images: Mapping[str, str | Path], cache: Path, workers: int = 1) -> int:
    """Make the missing thumbnails of {image sha256: its file} in `cache` (a store's
    `.cache/thumbs/`, the report's default), so that building the report finds them all
    made: for the runner, which has every image at hand anyway. One directory read when
    none is missing (100k cached: 1.3 to 1.6 s); `workers=1` makes them in the calling
    thread. The number of images that have a thumbnail."""
    got = thumbnails(cache, {cache_key(s): f for s, f in images.items()}, workers)
    return sum(p is not None for p in got.values())


def ensure_beside(items: Iterable[Any], store: str | Path) -> threading.Thread:
    """`ensure` in a daemon thread for the images of a run's plan items, once its engine
    has generated (beside scoring and the index): Pillow mostly leaves the GIL, and what is
    not made when the process ends, the report makes. The images are collected in the thread
    too: the items of a cached plan read their images on first use."""

    def work() -> None:
        ensure({im.sha256: im.file for it in items for im in it.images if im.sha256},
               Path(store) / ".cache" / "thumbs")

    t = threading.Thread(target=work, name="runner-thumbs", daemon=True)
    t.start()
    return t
