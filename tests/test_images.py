"""Hostile image files at plan level (no engine): item errors, refusals, normalization."""

from __future__ import annotations

import base64
import http.server
import threading
from pathlib import Path

import hostile as h
import numpy as np
import pytest
from PIL import Image as PILImage

from runner.errors import UserError
from runner.plan import images as images_mod
from runner.plan.images import ImageOptions
from runner.plan.load import Plan, check_errors, load_set


def cache_of(d: Path) -> Path:
    """The store's cache beside the set (never inside it)."""
    return d.parent / "store" / ".cache"


def plan_of(d: Path, files: dict[str, Path], **opts: object) -> Plan:
    """One item per file (id = key), each with that image."""
    items = [{"id": k, "text": "What is this?", "images": [str(f.relative_to(d))]}
             for k, f in files.items()]
    return load_set(str(h.write_set(d, items)), images=ImageOptions(**opts),  # type: ignore[arg-type]
                    cache=cache_of(d))


@pytest.fixture
def d(tmp_path: Path) -> Path:
    (tmp_path / "set" / "img").mkdir(parents=True)
    return tmp_path / "set"


@pytest.mark.parametrize("make, name, reason", [
    (h.zero_byte, "empty.png", "empty file"),
    (h.truncated_jpeg, "cut.jpg", "corrupt or truncated"),
    (h.truncated_png, "cut.png", "corrupt or truncated"),
    (h.damaged_png, "crc.png", "corrupt or truncated"),
    (h.text_as_png, "fake.png", "not an image Pillow can read"),
    (h.bomb_png, "bomb.png", "max_image_pixels"),
])
def test_bad_images_become_item_errors_and_good_items_stay(d: Path, make, name, reason):
    p = plan_of(d, {"bad": make(d / "img" / name), "good": h.png(d / "img" / "ok.png")})
    bad, good = p.items
    assert bad.error and reason in bad.error and name in bad.error
    assert bad.images == [] and good.error is None and good.images[0].width == 64
    assert bad.key and bad.key != good.key
    with pytest.raises(UserError, match="Item 'bad'.*on_item_error=fail"):
        check_errors(p.items, "fail")
    check_errors(p.items, "skip")


def test_bomb_guard_is_configurable(d: Path):
    f = h.png(d / "img" / "a.png", (100, 100))
    assert plan_of(d, {"a": f}).items[0].error is None
    err = plan_of(d, {"a": f}, max_image_pixels=5000).items[0].error
    assert err and "100x100 = 10,000 pixels" in err and "max_image_pixels=5,000" in err


def test_fixing_a_bad_file_changes_the_key(d: Path):
    f = h.zero_byte(d / "img" / "a.png")
    before = plan_of(d, {"a": f}).items[0]
    h.text_as_png(f)
    after = plan_of(d, {"a": f}).items[0]
    assert before.error and after.error and before.key != after.key


def test_plain_png_and_jpeg_go_by_path_untouched(d: Path):
    p = plan_of(d, {"p": h.png(d / "img" / "a.png"), "j": h.jpeg(d / "img" / "b.jpg")})
    for it, name in zip(p.items, ("a.png", "b.jpg"), strict=True):
        (im,) = it.images
        assert im.file == d / "img" / name and im.norm == ""
        assert it.messages[0]["content"][1]["image_url"]["url"] == "file://" + str(im.file)
    assert not (d / ".cache").exists() and not (cache_of(d) / "images").exists()


def _normalized(p: Plan, d: Path) -> PILImage.Image:
    (im,) = p.items[0].images
    assert im.norm and im.file.parent == cache_of(d) / "images"  # the store's, not the set's
    assert p.items[0].messages[0]["content"][1]["image_url"]["url"] == "file://" + str(im.file)
    out = PILImage.open(im.file)
    assert out.format == "PNG" and out.mode == "RGB" and out.size == (im.width, im.height)
    return out


def test_cmyk_jpeg_becomes_rgb(d: Path):
    out = _normalized(plan_of(d, {"a": h.cmyk_jpeg(d / "img" / "a.jpg")}), d)
    r, g, b = out.getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60  # red, not inverted


def test_exif_orientation_is_applied(d: Path):
    out = _normalized(plan_of(d, {"a": h.exif_rotated_jpeg(d / "img" / "a.jpg")}), d)
    assert out.size == (32, 80)  # stored 80x32, displayed portrait
    top = np.asarray(out)[:10].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 80  # the red band ends up on top after a 90° turn


def test_16_bit_png_is_scaled_not_clipped(d: Path):
    out = _normalized(plan_of(d, {"a": h.png16(d / "img" / "a.png", value=32768)}), d)
    assert out.getpixel((0, 0)) == (127, 127, 127)


def test_palette_and_alpha_go_on_white(d: Path):
    out = _normalized(plan_of(d, {"a": h.palette_alpha_png(d / "img" / "a.png")}), d)
    assert out.getpixel((2, 2)) == (0, 0, 255) and out.getpixel((25, 5)) == (255, 255, 255)
    pal = d / "img" / "p.png"
    PILImage.new("P", (8, 8), 3).save(pal)
    assert plan_of(d, {"p": pal}).items[0].images[0].norm


def test_animated_gif_takes_the_first_frame(d: Path):
    out = _normalized(plan_of(d, {"a": h.animated_gif(d / "img" / "a.gif")}), d)
    assert out.size == (40, 30) and getattr(out, "n_frames", 1) == 1


def test_other_formats_are_converted(d: Path):
    out = _normalized(plan_of(d, {"a": h.tiff(d / "img" / "a.tif")}), d)
    assert out.getpixel((1, 1)) == (10, 200, 10)


def test_max_image_size_downscales_and_changes_only_affected_keys(d: Path):
    big, small = h.png(d / "img" / "big.png", (300, 200)), h.png(d / "img" / "s.png", (50, 40))
    a = plan_of(d, {"big": big, "small": small})
    b = plan_of(d, {"big": big, "small": small}, max_image_size=100)
    im = b.items[0].images[0]
    assert (im.width, im.height) == (100, 67) and PILImage.open(im.file).size == (100, 67)
    assert a.items[0].key != b.items[0].key  # the key covers the conversion settings
    assert a.items[1].key == b.items[1].key  # an image it does not touch keeps its key
    assert b.items[1].images[0].file == small


def test_each_image_is_hashed_and_converted_once(d: Path, monkeypatch):
    calls: list[Path] = []
    real = images_mod._sha256
    monkeypatch.setattr(images_mod, "_sha256", lambda f: calls.append(f) or real(f))
    f = h.cmyk_jpeg(d / "img" / "a.jpg")
    items = [{"id": str(i), "text": "x", "images": ["img/a.jpg", "./img/a.jpg", "img/../img/a.jpg"]}
             for i in range(5)]
    p = load_set(str(h.write_set(d, items)), cache=cache_of(d))
    assert calls == [f] and len({im.file for it in p.items for im in it.images}) == 1
    cached = p.items[0].images[0].file
    mtime = cached.stat().st_mtime_ns
    load_set(str(d / "set.yaml"), cache=cache_of(d))  # a second plan reuses the converted copy
    assert cached.stat().st_mtime_ns == mtime


def test_traversal_and_escaping_symlinks_are_refused(d: Path, tmp_path: Path):
    secret = h.png(tmp_path / "secret.png")
    (d / "img" / "link.png").symlink_to(secret)
    for ref in ("../secret.png", "img/../../secret.png", "img/link.png", secret.as_uri()):
        f = h.write_set(d, [{"id": "a", "text": "x", "images": [ref]}])
        with pytest.raises(UserError, match="outside the set's folder"):
            load_set(str(f))


def test_unicode_file_names(d: Path):
    """By path, not percent-encoded: mistral-common opens file:// paths as written."""
    f = h.png(d / "img" / "café 猫 ünï.png")
    p = plan_of(d, {"ünï": f})
    (im,) = p.items[0].images
    assert p.items[0].error is None and im.file == f
    assert p.items[0].messages[0]["content"][1]["image_url"]["url"] == f"file://{f}"
    odd = h.png(d / "img" / "100% #1?.png")  # what a URL cannot carry: a same-bytes alias
    (im,) = plan_of(d, {"odd": odd}).items[0].images
    assert im.file.parent == cache_of(d) / "images" and im.file.read_bytes() == odd.read_bytes()
    assert im.path == "img/100% #1?.png"


def test_too_many_images_is_an_item_error(d: Path):
    imgs = [f"img/{h.png(d / 'img' / f'{i}.png').name}" for i in range(5)]
    f = h.write_set(d, [{"id": "five", "text": "x", "images": imgs},
                        {"id": "two", "text": "x", "images": imgs[:2]}])
    five, two = load_set(str(f), max_images=2).items
    assert five.error == "5 images in one prompt; model.limit_mm_per_prompt allows 2"
    assert two.error is None


def test_data_urls_are_stored_once_by_content(d: Path):
    raw = h.png(d / "x.png").read_bytes()
    url = "data:image/png;base64," + base64.b64encode(raw).decode()
    f = h.write_set(d, [{"id": "a", "text": "x", "images": [url]},
                        {"id": "b", "text": "x", "images": ["data:image/png;base64,@@@"]}])
    a, b = load_set(str(f), cache=cache_of(d)).items
    (im,) = a.images
    assert im.file.parent == cache_of(d) / "data" and im.file.read_bytes() == raw
    assert len(im.path) < 80 and im.path.startswith("data:image/png;sha256=")
    assert b.error and "not valid base64" in b.error


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass


def test_remote_images_only_when_allowed(d: Path, tmp_path: Path):
    web = tmp_path / "web"
    web.mkdir()
    h.png(web / "r.png", (20, 10))
    srv = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(web)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        f = h.write_set(d, [{"id": "a", "text": "x", "images": [f"{base}/r.png"]},
                            {"id": "b", "text": "x", "images": [f"{base}/missing.png"]}])
        with pytest.raises(UserError, match="allow_remote=true"):
            load_set(str(f))
        a, b = load_set(str(f), images=ImageOptions(allow_remote=True),
                        cache=cache_of(d)).items
        assert a.error is None and a.images[0].width == 20
        assert a.images[0].file.is_relative_to(cache_of(d) / "remote")
        assert b.error and "could not fetch" in b.error
    finally:
        srv.shutdown()
