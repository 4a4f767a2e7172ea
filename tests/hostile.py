"""Hostile image files, generated (nothing binary is checked in)."""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def png(p: Path, size: tuple[int, int] = (64, 48), color: tuple = (200, 30, 30)) -> Path:
    Image.new("RGB", size, color).save(p, "PNG")
    return p


def jpeg(p: Path, size: tuple[int, int] = (64, 48)) -> Path:
    a = (np.indices((size[1], size[0])).sum(0) % 255).astype(np.uint8)
    Image.fromarray(np.stack([a, 255 - a, a // 2], -1), "RGB").save(p, "JPEG", quality=90)
    return p


def zero_byte(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def truncated_jpeg(p: Path) -> Path:
    buf = io.BytesIO()
    a = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(a, "RGB").save(buf, "JPEG", quality=95)
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return p


def truncated_png(p: Path) -> Path:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    p.write_bytes(buf.getvalue()[:-30])
    return p


def damaged_png(p: Path) -> Path:
    """One flipped byte inside the pixel data: the chunk's CRC no longer matches."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    b[b.index(b"IDAT") + 8] ^= 0xFF
    p.write_bytes(bytes(b))
    return p


def text_as_png(p: Path) -> Path:
    p.write_text("this is not an image, just text renamed to .png\n")
    return p


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(p: Path, w: int = 40000, h: int = 40000) -> Path:
    """A valid PNG header claiming w x h pixels, with a tiny (bogus) payload."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                  + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))
    return p


def animated_gif(p: Path) -> Path:
    frames = [Image.new("P", (40, 30), i * 60) for i in range(3)]
    frames[0].save(p, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return p


def cmyk_jpeg(p: Path, size: tuple[int, int] = (48, 32)) -> Path:
    Image.new("CMYK", size, (0, 255, 255, 0)).save(p, "JPEG", quality=95)  # red
    return p


def exif_rotated_jpeg(p: Path, size: tuple[int, int] = (80, 32), orientation: int = 6) -> Path:
    """Stored landscape, displayed portrait (orientation 6: rotate 90° clockwise)."""
    im = Image.new("RGB", size, (255, 255, 255))
    im.paste((255, 0, 0), (0, 0, 16, size[1]))  # red band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(p, "JPEG", exif=exif.tobytes(), quality=95)
    return p


def png16(p: Path, size: tuple[int, int] = (40, 24), value: int = 32768) -> Path:
    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint16)).save(p, "PNG")
    return p


def palette_alpha_png(p: Path) -> Path:
    im = Image.new("RGBA", (30, 20), (0, 0, 255, 0))  # fully transparent blue
    im.paste((0, 0, 255, 255), (0, 0, 10, 20))
    im.save(p, "PNG")
    return p


def tiff(p: Path) -> Path:
    Image.new("RGB", (36, 20), (10, 200, 10)).save(p, "TIFF")
    return p


def flip_a_byte_keep_mtime(f: Path) -> None:
    """Other bytes, the same size and the old mtime put back: only the ctime tells (the racy
    case of a stat cache)."""
    st, data = f.stat(), bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def write_set(d: Path, items: list[dict], **top: object) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    f = d / "set.yaml"
    f.write_text(yaml.safe_dump({**top, "items": items}, allow_unicode=True, sort_keys=False),
                 encoding="utf-8")
    return f


PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


def hostile_set(d: Path) -> Path:
    """The sample set's items, plus good images that need normalization and bad ones."""
    shutil.copytree(PROMPTS / "sample" / "images", d / "images")
    items = yaml.safe_load((PROMPTS / "sample" / "set.yaml").read_text())["items"]
    good = {"cmyk": cmyk_jpeg(d / "images" / "cmyk.jpg"),
            "exif": exif_rotated_jpeg(d / "images" / "rot.jpg"),
            "deep": png16(d / "images" / "deep.png"),
            "gif": animated_gif(d / "images" / "anim.gif"),
            "unicode": png(d / "images" / "café 猫.png", (100, 60))}
    bad = {"zero": zero_byte(d / "images" / "zero.png"),
           "truncated": truncated_jpeg(d / "images" / "cut.jpg"),
           "fake": text_as_png(d / "images" / "fake.png"),
           "bomb": bomb_png(d / "images" / "bomb.png")}
    items += [{"id": k, "text": "Describe it.", "images": [f"images/{f.name}"]}
              for k, f in {**good, **bad}.items()]
    items.append({"id": "five_images", "text": "Compare them.",
                  "images": [f"images/{f.name}" for f in list(good.values())[:5]]})
    items.append({"id": "too_long", "text": "word " * 5000})
    return write_set(d, items, name="hostile")
