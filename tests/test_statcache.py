"""The image stat cache (runner/plan/statcache.py) and the store's image cache: a file that did not
change is not read again; any change, or a racy entry, is; nothing is written into the set."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
from pathlib import Path

import hostile as h
import pytest

from conftest import TINY, fake_env, run_dirs_of, runner
from runner.plan import images as images_mod
from runner.plan import statcache
from runner.plan.load import load_set


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file the planner reads to hash it, in order."""
    calls: list[Path] = []
    real = images_mod._sha256
    monkeypatch.setattr(images_mod, "_sha256", lambda f: calls.append(f) or real(f))
    return calls


def age(f: Path, seconds: float = 60) -> None:
    """Set the file's mtime back, out of the racy window (its ctime moves to now)."""
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def one_image_set(d: Path, make=h.png) -> tuple[Path, Path]:
    (d / "img").mkdir(parents=True)
    f = make(d / "img" / "a.png")
    age(f)
    return h.write_set(d, [{"id": "a", "text": "x", "images": ["img/a.png"]}]), f


def plan(set_file: Path, cache: Path):
    p = load_set(str(set_file), cache=cache)
    p.remember()
    return p.items[0]


def test_an_unchanged_file_is_not_read_again(tmp_path: Path, hashed: list[Path]):
    s, f = one_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    first = plan(s, cache)
    assert hashed == [f]
    again = plan(s, cache)
    assert hashed == [f] and again.key == first.key and again.images == first.images


def test_same_size_new_mtime_is_read_again(tmp_path: Path, hashed: list[Path]):
    s, f = one_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    plan(s, cache)
    age(f, 30)  # touched: the same bytes and size, another mtime
    plan(s, cache)
    assert hashed == [f, f]


def test_same_mtime_new_bytes_is_read_again(tmp_path: Path, hashed: list[Path]):
    s, f = one_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    before = plan(s, cache)
    h.flip_a_byte_keep_mtime(f)
    after = plan(s, cache)
    assert hashed == [f, f] and after.key != before.key  # its ctime told


def test_a_file_replaced_by_another_is_read_again(tmp_path: Path, hashed: list[Path]):
    s, f = one_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    before = plan(s, cache)
    other = h.png(tmp_path / "other.png", color=(9, 9, 9))
    age(other)
    os.replace(other, f)  # another inode in its place
    after = plan(s, cache)
    assert hashed == [f, f] and after.key != before.key


def test_a_racy_entry_is_read_again_until_it_is_old_enough(tmp_path: Path,
                                                            hashed: list[Path]):
    (tmp_path / "set" / "img").mkdir(parents=True)
    f = h.png(tmp_path / "set" / "img" / "a.png")  # written now: hashed within RACY_NS of it
    s = h.write_set(tmp_path / "set", [{"id": "a", "text": "x", "images": ["img/a.png"]}])
    cache = tmp_path / "cache"
    plan(s, cache)
    plan(s, cache)
    assert hashed == [f, f]  # racy: not trusted
    age(f, statcache.RACY_NS / 1e9 + 1)  # now old: hashed once more, then trusted
    plan(s, cache)
    plan(s, cache)
    assert hashed == [f, f, f]


def test_a_bad_image_is_remembered_as_bad(tmp_path: Path, hashed: list[Path]):
    s, f = one_image_set(tmp_path / "set", make=h.text_as_png)
    cache = tmp_path / "cache"
    a = plan(s, cache)
    b = plan(s, cache)
    assert hashed == [f] and a.error == b.error and "not an image" in a.error and a.key == b.key


def tree(d: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*"))}


def test_a_read_only_set_runs_and_nothing_is_written_into_it(tmp_path: Path):
    """Images that need converting, a data: URL: the copies go into the store's cache."""
    d = tmp_path / "ro"
    (d / "img").mkdir(parents=True)
    h.cmyk_jpeg(d / "img" / "cmyk.jpg")
    h.png(d / "img" / "plain.png")
    url = "data:image/png;base64," + base64.b64encode(h.png(tmp_path / "x.png").read_bytes()
                                                      ).decode()
    h.write_set(d, [{"id": "c", "text": "x", "images": ["img/cmyk.jpg"]},
                    {"id": "p", "text": "x", "images": ["img/plain.png"]},
                    {"id": "u", "text": "x", "images": [url]}], name="ro")
    before = tree(d)
    for p in [d, *d.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    store = tmp_path / "store"
    try:
        r = runner(*TINY, f"prompts.name={d / 'set.yaml'}", f"store.root={store}",
                   env=fake_env())
    finally:
        for p in [d, *d.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert r.returncode == 0, r.stderr[-3000:]
    assert tree(d) == before  # not a file added or touched
    (run,) = run_dirs_of(store)
    recs = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in recs) == ["c", "p", "u"]
    assert all(x["status"] == "ok" for x in recs)
    assert len(list((store / ".cache" / "images").iterdir())) == 1  # the converted copy
    assert len(list((store / ".cache" / "data").iterdir())) == 1
    shutil.rmtree(store / ".cache")
