"""Stage 2, plan: safe image handling for prompt sets: resolve, guard, hash once, normalize once.

vLLM reads `file://` images itself (restricted to its allowed_local_media_path), so anything
it would read differently from what we plan (EXIF rotation, CMYK, 16-bit, palette/alpha,
animation, exotic formats, oversized images) is converted once into the store's cache
(`<store>/.cache/images/`), never into the prompt set's folder (which may be read-only): the
token plan sees exactly the pixels the model sees. Plain RGB/greyscale PNG and JPEG go by path,
untouched. No pixels are kept in memory. A stat cache (runner/plan/statcache.py) spares a rerun
from reading files that did not change.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from runner.errors import UserError
from runner.files import atomic_write, data_url
from runner.plan.cache import code_digest
from runner.plan.statcache import Probe, StatCache

NORM_VERSION = 1  # bump when the conversion changes: keys of converted images change with it
MAX_DOWNLOAD = 64 << 20  # bytes; a remote image larger than this is an item error
PLAIN_FORMATS = ("PNG", "JPEG")
PLAIN_MODES = ("RGB", "L")
ORIENTATION = 0x0112


@dataclass(frozen=True)
class Image:
    path: str  # as written in the set
    file: Path  # what vLLM reads: the original, or its normalized copy in the store's cache
    sha256: str  # of the original bytes
    width: int = 0  # as the model sees it (after normalization)
    height: int = 0
    norm: str = ""  # what normalization did ("" = untouched); part of the item key

    @property
    def url(self) -> str:
        return file_url(self.file)


UNSAFE = "%?#"  # characters a file:// URL cannot carry unescaped


def file_url(f: Path) -> str:
    """`file://` + the path, not percent-encoded: vLLM decodes its file URLs but, with the
    Mistral tokenizer, mistral-common opens the path as written (so `café.png` must stay
    `café.png`). Paths with characters in UNSAFE are aliased into the cache instead."""
    return "file://" + str(f)


class ImageError(Exception):
    """An item-level image problem: the item is stored as an error, the run goes on."""

    sha256 = ""  # of the bad bytes when known, so fixing the file changes the item's key


@dataclass(frozen=True)
class ImageOptions:
    allow_remote: bool = False
    max_image_pixels: int = 89_478_485  # Pillow's own decompression-bomb threshold
    max_image_size: int | None = None  # longest side, in pixels; larger images are downscaled


def _sha256(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _cache_write(dest: Path, data: bytes | PILImage.Image) -> None:
    """Write into the image cache atomically; no fsync (a lost cache entry is redone)."""
    def save(fh: IO[bytes]) -> None:
        if isinstance(data, PILImage.Image):
            data.save(fh, "PNG", compress_level=1)  # a cache: speed over size
        else:
            fh.write(data)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, save, sync=False)
    except OSError as e:  # the whole set is affected: a set problem, not an item problem
        raise UserError(f"Cannot write the image cache {dest.parent} ({e.strerror}); make the "
                        "store (store.root) writable.") from None


@contextmanager
def pixel_limit(pixels: int) -> Iterator[None]:
    """Pillow refuses to open images over 2x its MAX_IMAGE_PIXELS: raise it to a larger
    configured limit for the block only (Pillow's limit is process-wide)."""
    before = PILImage.MAX_IMAGE_PIXELS
    if pixels > (before or 0):
        PILImage.MAX_IMAGE_PIXELS = pixels
    try:
        yield
    finally:
        PILImage.MAX_IMAGE_PIXELS = before


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    """RGB as vLLM and mistral-common would make it, but 16-bit greys scaled, not clipped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.uint32)
        top = 65535 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255
        im = PILImage.fromarray((a * 255 // top).astype(np.uint8), "L")
    if im.mode == "F":
        im = im.convert("L")
    if im.mode in ("RGBA", "LA", "PA", "P") or "transparency" in im.info:
        im = im.convert("RGBA")
        bg = PILImage.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def _fit(w: int, h: int, cap: int | None) -> tuple[int, int]:
    if not cap or max(w, h) <= cap:
        return w, h
    r = cap / max(w, h)
    return max(1, round(w * r)), max(1, round(h * r))


class Images:
    """Resolves each image reference once per plan (path, file:// URL, data: URL, http(s)).
    Use it inside `pixel_limit(opts.max_image_pixels)`."""

    def __init__(self, root: Path, opts: ImageOptions, cache: Path | None = None,
                 reads: Any = None):
        """`cache`: the store's cache folder (converted images, data: payloads, downloads, the
        stat cache); None: a temporary folder of this process, and no stat cache. `reads`: the
        plan's record of what it read (runner/plan/cache.py Inputs), or None."""
        self.root = root
        self.opts = opts
        self.cache = (cache or Path(tempfile.mkdtemp(prefix="pixtral-runner-"))).resolve()
        if any(c in str(root) for c in UNSAFE):
            raise UserError(f"The set's folder {root} has one of {UNSAFE!r} in its path, which "
                            "image URLs cannot carry; move or rename it.")
        self._seen: dict[str, Image | Exception] = {}
        self._dirs: dict[str, str] = {}  # folder -> its resolved path
        self._norm_tag = f"v{NORM_VERSION}" + (f",max={opts.max_image_size}"
                                               if opts.max_image_size else "")
        # What a probe's verdict depends on: the conversion, the bomb guard (an image good
        # under one pixel limit is refused under a lower one) and the code that probes.
        stat_opts = f"{self._norm_tag},pixels={opts.max_image_pixels},code={code_digest()}"
        self.stat = StatCache(self.cache / "stat.sqlite", stat_opts) if cache else None
        self.inputs = reads

    def close(self) -> None:
        """Keep what this plan learned in the stat cache."""
        if self.stat is not None:
            self.stat.save()

    def _key(self, ref: str, base: Path) -> str:
        if ref.startswith(("data:", "http://", "https://")):
            return ref
        rel = url2pathname(urlparse(ref).path) if ref.startswith("file://") else ref
        # one entry per file, however it is written (strings: a 100k-image rerun stats, no more)
        return os.path.normpath(os.path.join(base, rel))

    def _get(self, ref: str, base: Path, where: str) -> Image | Exception:
        if self.inputs is not None and not ref.startswith(("data:", "http://", "https://")):
            self.inputs.note(self._key(ref, base))  # stat'ed before it is read
        try:
            return self._resolve(ref, base, where)
        except (ImageError, UserError) as e:
            return e

    def prefetch(self, refs: list[tuple[str, Path, str]]) -> None:
        """Probe the images of a batch of items in threads (hashing and decoding release the
        GIL); errors are kept and raised, in item order, by __call__."""
        todo: dict[str, tuple[str, Path, str]] = {}
        for ref, base, where in refs:
            if isinstance(ref, str) and ref and (k := self._key(ref, base)) not in self._seen:
                if self._known(k):  # the stat cache knows it: no read, no thread
                    self._seen[k] = self._get(ref, base, where)
                else:
                    todo.setdefault(k, (ref, base, where))
        if len(todo) < 2:
            return
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            for k, hit in zip(todo, pool.map(lambda a: self._get(*a), todo.values()),
                              strict=True):
                self._seen[k] = hit

    def _known(self, key: str) -> bool:
        """A local file the stat cache has an entry for, unchanged."""
        if self.stat is None or key.startswith(("data:", "http://", "https://")):
            return False
        try:
            return self.stat.get(key, os.stat(key)) is not None
        except OSError:
            return False

    def __call__(self, ref: str, base: Path, where: str) -> Image:
        """`base`: the folder relative paths resolve against. Raises UserError for set problems
        (outside the root, missing, remote not allowed) and ImageError for bad images."""
        if not isinstance(ref, str) or not ref:
            raise UserError(f"{where}: an image reference must be a non-empty string.")
        key = self._key(ref, base)
        hit = self._seen.get(key)
        if hit is None:
            hit = self._seen[key] = self._get(ref, base, where)
        if isinstance(hit, Exception):
            raise hit
        if hit.path == ref or ref.startswith("data:"):
            return hit
        return Image(ref, hit.file, hit.sha256, hit.width, hit.height, hit.norm)

    def _resolve(self, ref: str, base: Path, where: str) -> Image:
        if ref.startswith("data:"):  # keep a label, not the bytes, in the plan
            f = self._from_data(ref)
            return self._probe(f"{ref.partition(';')[0]};sha256={f.name[:16]}", f)
        if ref.startswith(("http://", "https://")):
            if not self.opts.allow_remote:
                raise UserError(f"{where}: image URL '{ref[:80]}' is remote; set "
                                "prompts.allow_remote=true to fetch http(s) images.")
            return self._probe(ref, self._download(ref))
        f = self._real(self._key(ref, base))
        if not f.is_relative_to(self.root):
            raise UserError(f"{where}: image '{ref}' is outside the set's folder {self.root}; "
                            "keep images inside it.")
        if not f.is_file():
            raise UserError(f"{where}: image '{ref}' not found (looked at {f}).")
        return self._probe(ref, f)

    def _real(self, path: str) -> Path:
        """The file with every symlink resolved (as Path.resolve), its folder's resolved once
        per plan: only a symlinked file needs a resolve of its own."""
        head, name = os.path.split(path)
        real = self._dirs.get(head)
        if real is None:
            real = self._dirs[head] = os.path.realpath(head)
        f = os.path.join(real, name)
        return Path(os.path.realpath(f) if os.path.islink(f) else f)

    def _from_data(self, url: str) -> Path:
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            raise ImageError(f"{head[:60]} URL is not base64-encoded")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ImageError(f"{head[:60]} URL: the payload is not valid base64") from None
        dest = self.cache / "data" / hashlib.sha256(data).hexdigest()
        if not dest.exists():
            _cache_write(dest, data)
        return dest

    def _download(self, url: str) -> Path:
        # Fetched once per cache (keyed by URL): the item key then covers the bytes we got.
        dest = self.cache / "remote" / hashlib.sha256(url.encode()).hexdigest()
        if dest.exists():
            return dest
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "pixtral-runner"})
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - http(s) only
                data = r.read(MAX_DOWNLOAD + 1)
        except (OSError, ValueError) as e:
            if self.inputs is not None:  # may succeed next time: this plan is not kept
                self.inputs.volatile = True
            raise ImageError(f"could not fetch {url[:80]}: {e}") from None
        if len(data) > MAX_DOWNLOAD:
            raise ImageError(f"{url[:80]} is larger than {MAX_DOWNLOAD >> 20} MB")
        _cache_write(dest, data)
        return dest

    def _alias(self, f: Path, sha: str) -> Path:
        """A same-bytes copy (a hard link when possible) with a URL-safe name."""
        out = self.cache / "images" / f"{sha[:40]}{f.suffix.lower()}"
        if out.exists():
            return out
        tmp = out.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{out.name}")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, tmp)
            except OSError:
                shutil.copyfile(f, tmp)
            os.replace(tmp, out)
        except OSError as e:
            raise UserError(f"Cannot write the image cache {out.parent} ({e.strerror}); make "
                            "the store (store.root) writable.") from None
        return out

    def _probe(self, ref: str, f: Path) -> Image:
        try:
            st = f.stat()  # before hashing: a change while we read shows up next time
            if self.stat is not None and (hit := self.stat.get(f, st)) is not None:
                return self._cached(ref, f, hit)
            seen = time.time_ns()
            sha = _sha256(f)
        except OSError as e:
            raise ImageError(f"image '{ref}' cannot be read ({e.strerror})") from None
        try:
            im = self._open(ref, f, sha)
        except ImageError as e:
            e.sha256 = sha
            if self.stat is not None:
                self.stat.put(f, st, seen, Probe(sha, "", 0, 0, "", str(e), ref))
            raise
        if self.stat is not None:
            self.stat.put(f, st, seen, Probe(sha, str(im.file), im.width, im.height, im.norm,
                                             "", ref))
        return im

    def _cached(self, ref: str, f: Path, hit: Probe) -> Image:
        if hit.error:
            e = ImageError(hit.error.replace(f"'{hit.ref}'", f"'{ref}'"))
            e.sha256 = hit.sha256
            raise e
        if hit.file != str(f) and not Path(hit.file).exists():  # a converted copy was removed
            return self._open(ref, f, hit.sha256)
        return Image(ref, Path(hit.file), hit.sha256, hit.width, hit.height, hit.norm)

    def _open(self, ref: str, f: Path, sha: str) -> Image:
        if f.stat().st_size == 0:
            raise ImageError(f"image '{ref}' is an empty file (0 bytes)")
        cap = self.opts.max_image_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            try:
                im = PILImage.open(f)
            except PILImage.DecompressionBombError as e:
                raise ImageError(f"image '{ref}' is over prompts.max_image_pixels={cap:,} "
                                 f"(decompression-bomb guard: {e})") from None
            except UnidentifiedImageError:
                raise ImageError(f"image '{ref}' is not an image Pillow can read (unknown "
                                 "format or not an image)") from None
            except (OSError, SyntaxError, ValueError) as e:
                raise ImageError(f"image '{ref}' is not an image Pillow can read "
                                 f"({type(e).__name__}: {e})") from None
            with im:
                w, h = im.size
                if w * h > cap:
                    raise ImageError(f"image '{ref}' is {w}x{h} = {w * h:,} pixels, over "
                                     f"prompts.max_image_pixels={cap:,} (decompression-bomb guard)")
                return self._check(ref, f, sha, im)

    def _check(self, ref: str, f: Path, sha: str, im: PILImage.Image) -> Image:
        fmt, (w, h) = im.format or "?", im.size
        try:
            orient = im.getexif().get(ORIENTATION, 1)
        except Exception:  # noqa: BLE001 - malformed EXIF: treat as upright, like vLLM
            orient = 1
        why = []
        if fmt not in PLAIN_FORMATS:
            why.append(fmt)
        if getattr(im, "n_frames", 1) > 1:
            why.append("first frame")
        if orient not in (1, None):
            why.append("exif")
        if im.mode not in PLAIN_MODES or "transparency" in im.info:
            why.append(im.mode)
        if orient in (5, 6, 7, 8):
            w, h = h, w
        nw, nh = _fit(w, h, self.opts.max_image_size)
        if (nw, nh) != (w, h):
            why.append(f"max {self.opts.max_image_size}")
        out = self.cache / "images" / f"{sha[:40]}-{self._norm_tag.replace(',', '_')}.png"
        if why and out.exists():
            return Image(ref, out, sha, nw, nh, self._norm_tag)
        try:  # the whole file is checked; plain images cheaply (CRCs, or JPEG at 1/8 scale)
            if fmt == "PNG" and not why:
                with PILImage.open(f) as v:  # verify() must come first after open
                    v.verify()  # every chunk's CRC and the end marker: cut or damaged files
            else:
                if fmt == "JPEG" and not why:
                    im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                im.load()
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageError(f"image '{ref}' is corrupt or truncated "
                             f"({type(e).__name__}: {e})") from None
        if not why:
            return Image(ref, self._alias(f, sha) if any(c in str(f) for c in UNSAFE) else f,
                         sha, w, h)
        try:
            rgb = _to_rgb(ImageOps.exif_transpose(im))
            if rgb.size != (nw, nh):
                rgb = rgb.resize((nw, nh), PILImage.Resampling.LANCZOS)
        except (OSError, ValueError) as e:
            raise ImageError(f"image '{ref}' could not be converted ({e})") from None
        _cache_write(out, rgb)
        return Image(ref, out, sha, nw, nh, self._norm_tag)


def inline_images(messages: list[dict[str, Any]], keep: Path | None = None
                  ) -> list[dict[str, Any]]:
    """The messages, with each file:// image sent as a data: URL of the same bytes, except those
    under `keep` (vLLM's allowed_local_media_path, which it reads itself; the store's cache is
    outside it). Called as each request is queued, so only the in-flight ones hold the bytes."""
    def part(p: dict[str, Any]) -> dict[str, Any]:
        url = p["image_url"]["url"] if p.get("type") == "image_url" else ""
        path = url[len("file://"):]  # file_url: the path as written, not percent-encoded
        if not url.startswith("file://") or (keep and Path(path).is_relative_to(keep)):
            return p
        return {**p, "image_url": {**p["image_url"], "url": data_url(path)}}

    return [m if not isinstance(m.get("content"), list) else
            {**m, "content": [part(p) for p in m["content"]]} for m in messages]
