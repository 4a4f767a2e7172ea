"""Report thumbnails: the byte budget that keeps a one-file report under 3 KB per image item,
the cache by image hash, and `ensure` (thumbnails made ahead of the report)."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFilter

import fakes
import runner.results.report.thumbs as th
from runner.results.report.html import build_report
from runner.results.scoring.score import score_run

WORDS = "the a chart shows revenue quarter table city receipt total of in is and with".split()


def photo(path: Path, size: tuple[int, int] = (256, 192)) -> str:
    """A noisy photo-like JPEG (bench/report_scale.py's worst case for thumbnail bytes);
    its sha256."""
    rng = random.Random(path.name)
    w, h = size
    im = Image.effect_noise(size, 40).convert("RGB")
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.randrange(w - 40), rng.randrange(h - 40)
        d.ellipse([x, y, x + rng.randrange(10, w // 2), y + rng.randrange(10, h // 2)],
                  fill=tuple(rng.randrange(256) for _ in range(3)))
    im.filter(ImageFilter.GaussianBlur(1)).save(path, quality=90)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def photo_run(tmp_path: Path, n: int, name: str) -> Path:
    """A scored run of the first `n` of 60 photo items, each answered with ~60 words."""
    sdir = tmp_path / "prompts"
    (sdir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(n)
    recs = []
    for i in range(n):
        p = f"images/{i}.jpg"
        f = sdir / p
        sha = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else photo(f)
        out = " ".join(rng.choice(WORDS) for _ in range(60)) + " The answer is (B)."
        recs.append(fakes.record(f"q{i}", out, key=f"{name}-{i}", prompt=f"Question {i}?",
                                 expected="ABCD"[i % 4], tags=[f"t{i % 5}"], scorer="choice",
                                 images=[{"path": p, "sha256": sha}]))
    cfg = {"prompts": {"name": str(sdir / "set.jsonl")}, "sampling": {"temperature": 0}}
    (sdir / "set.jsonl").touch()
    run = fakes.write_run(tmp_path / "outputs", name, recs, config=cfg)
    score_run(run)
    return run


@pytest.mark.parametrize("size", [(256, 192), (1024, 768), (120, 400)])
def test_a_noisy_photo_fits_the_budget_at_160_px(tmp_path: Path, size: tuple[int, int]) -> None:
    f = tmp_path / "p.jpg"
    photo(f, size)
    data, ext = th.render(f) or (b"", "")
    assert ext == ".webp" and 1000 < len(data) <= th.BUDGET  # not shrunk to nothing either
    with Image.open(io.BytesIO(data)) as im:
        assert max(im.size) == th.THUMB
        assert abs(im.width / im.height - size[0] / size[1]) < 0.02


def test_one_file_report_is_under_3_kb_per_image_item(tmp_path: Path) -> None:
    """Bytes per item at the default settings, thumbnails inlined as base64: the growth from
    20 to 60 items, so the page's fixed CSS and JS do not count."""
    cache = tmp_path / "cache"
    small = build_report([photo_run(tmp_path, 20, "small")], tmp_path / "a.html", cache=cache)
    big = build_report([photo_run(tmp_path, 60, "big")], tmp_path / "b.html", cache=cache)
    assert big.name == "b.html" and big.read_text().count("data:image/webp;base64,") == 60
    per_item = (big.stat().st_size - small.stat().st_size) / 40
    assert 2000 < per_item <= 3000


def test_ensure_makes_what_the_report_then_finds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thumbnails made ahead, by image hash, are the ones the report's build takes."""
    run = photo_run(tmp_path, 5, "r")
    images = {hashlib.sha256(f.read_bytes()).hexdigest(): f
              for f in (tmp_path / "prompts" / "images").iterdir()}
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    cache = tmp_path / "outputs" / ".cache" / "thumbs"  # the report's default
    assert th.ensure(images | {"0" * 64: tmp_path / "bad.jpg"}, cache) == 5
    assert len(list(cache.glob(f"*-v{th.VERSION}.webp"))) == 5

    def fail(file: Path) -> None:
        raise AssertionError(f"thumbnail of {file} recomputed")

    monkeypatch.setattr(th, "render", fail)
    assert th.ensure(images, cache) == 5
    page = build_report([run], tmp_path / "r.html")
    assert page.read_text().count("data:image/webp;base64,") == 5


def test_a_thumbnail_of_an_older_encoding_is_made_again(tmp_path: Path) -> None:
    f = tmp_path / "p.jpg"
    sha = photo(f)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{sha}.webp").write_bytes(b"old")  # version 1's name
    got = th.thumbnails(cache, {sha: f})[sha]
    assert got == str(cache / f"{sha}-v{th.VERSION}.webp") and Path(got).stat().st_size > 3


def test_a_rotated_photo_is_drawn_upright(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: turn 90 degrees to show
    Image.new("RGB", (320, 100), (200, 30, 30)).save(tmp_path / "r.jpg", exif=exif)
    data, _ = th.render(tmp_path / "r.jpg") or (b"", "")
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (50, 160)


def test_one_failing_image_leaves_only_itself_without_a_thumbnail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decompression bomb (Pillow's DecompressionBombError is no OSError) among good images:
    it gets no thumbnail, the others do, and nothing raises."""
    good, bomb = tmp_path / "good.jpg", tmp_path / "bomb.png"
    photo(good)
    Image.new("RGB", (300, 300), "white").save(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 90,000 px > 2x: an error
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)  # the real error, raised by Pillow for this file
    assert th.render(bomb) is None and th.render(good) is not None
    got = th.thumbnails(tmp_path / "cache", {"g": good, "b": bomb}, workers=1)
    assert got["b"] is None and got["g"] is not None and Path(got["g"]).is_file()
