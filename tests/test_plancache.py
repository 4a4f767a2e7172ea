"""The plan cache (runner/plan/cache.py): a rerun of an unchanged set reuses the plan, exactly;
any change to what the plan read (the set, an image, a folder's listing, a schema, a copy in
the store's cache) or to the plan's options plans it again; nothing goes into the set."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import stat
from pathlib import Path

import hostile as h
import pytest

from conftest import TINY, make_cfg
from runner.job.recipe import Job
from runner.plan import cache as plancache
from runner.plan import load as plan_mod
from runner.plan.images import ImageOptions
from runner.plan.load import load_set
from runner.store.record import read_records


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The sets planned item by item (not served by the plan cache), in order. Inputs count
    as old enough at once (no racy window), so a plan is kept without waiting."""
    monkeypatch.setattr(plancache, "RACY_NS", 0)
    calls: list[Path] = []
    real = plan_mod._plan
    monkeypatch.setattr(plan_mod, "_plan", lambda f, *a: calls.append(f) or real(f, *a))
    return calls


def two_image_set(d: Path) -> tuple[Path, Path]:
    (d / "img").mkdir(parents=True)
    a = h.png(d / "img" / "a.png")
    h.cmyk_jpeg(d / "img" / "b.jpg")  # converted: its copy lives in the store's cache
    s = h.write_set(d, [{"id": "a", "text": "x", "images": ["img/a.png"]},
                        {"id": "b", "text": "y", "images": ["img/b.jpg"], "expected": "z"},
                        {"id": "bad", "text": "z", "images": ["img/a.png", "img/a.png"]}])
    return s, a


def plan(s: Path, cache: Path, **kw):
    p = load_set(str(s), cache=cache, max_images=1, **kw)
    p.remember()
    return p


def fields(p) -> list[dict]:
    return [dataclasses.asdict(it) for it in p.items]


def test_a_hit_is_the_same_plan(tmp_path: Path, planned: list[Path]):
    s, _ = two_image_set(tmp_path / "set")
    cache = tmp_path / "store" / ".cache"
    fresh = plan(s, cache)
    hit = plan(s, cache)
    assert planned == [s]  # the second came from the cache
    assert [it.key for it in hit.items] == [it.key for it in fresh.items]
    assert [(it.id, it.error, it.error_kind) for it in hit.items] == \
        [(it.id, it.error, it.error_kind) for it in fresh.items]
    assert hit.items[2].error_kind == "too_many_images"
    assert fields(hit) == fields(fresh)  # every field, read on first use
    assert (hit.name, hit.file, hit.root, hit.format) == \
        (fresh.name, fresh.file, fresh.root, fresh.format)
    again = plan(s, cache)  # a stub survives pickling (filled first)
    assert pickle.loads(pickle.dumps(again.items[1])) == fresh.items[1]


def test_a_changed_set_file_is_planned_again(tmp_path: Path, planned: list[Path]):
    s, _ = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    before = plan(s, cache)
    s.write_text(s.read_text().replace("text: y", "text: w"))
    after = plan(s, cache)
    assert planned == [s, s] and after.items[1].text == "w"
    assert after.items[1].key != before.items[1].key


def test_same_size_new_mtime_is_planned_again(tmp_path: Path, planned: list[Path]):
    s, a = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    plan(s, cache)
    st = a.stat()
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    plan(s, cache)
    assert planned == [s, s]


def test_same_mtime_new_bytes_is_planned_again(tmp_path: Path, planned: list[Path]):
    """The racy case: the same size and mtime, other bytes. The ctime tells."""
    s, a = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    before = plan(s, cache)
    h.flip_a_byte_keep_mtime(a)
    after = plan(s, cache)
    assert planned == [s, s] and after.items[0].key != before.items[0].key


def test_a_file_replaced_by_another_is_planned_again(tmp_path: Path, planned: list[Path]):
    s, a = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    before = plan(s, cache)
    other = h.png(tmp_path / "other.png", color=(9, 9, 9))
    os.replace(other, a)
    after = plan(s, cache)
    assert planned == [s, s] and after.items[0].key != before.items[0].key


def test_a_plan_read_within_the_racy_window_is_not_kept(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    s, _ = two_image_set(tmp_path / "set")  # written just now
    cache = tmp_path / "cache"
    monkeypatch.setattr(plancache, "RACY_NS", 3600 * 10**9)  # everything is recent
    plan(s, cache)
    assert not (cache / "plans").exists()


def test_other_options_are_another_plan(tmp_path: Path, planned: list[Path]):
    s, _ = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    base = plan(s, cache)
    small = plan(s, cache, images=ImageOptions(max_image_size=16))
    system = plan(s, cache, system="Be brief.")
    assert planned == [s, s, s]
    assert small.items[0].key != base.items[0].key
    assert system.items[0].messages[0] == {"role": "system", "content": "Be brief."}
    plan(s, cache, system="Be brief.")  # each kept apart
    assert planned == [s, s, s]


def test_a_removed_copy_in_the_store_is_planned_again(tmp_path: Path, planned: list[Path]):
    s, _ = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    first = plan(s, cache)
    copy = first.items[1].images[0].file
    assert copy.is_relative_to(cache)
    copy.unlink()
    again = plan(s, cache)
    assert planned == [s, s] and again.items[1].images[0].file.is_file()


def test_a_new_image_in_the_folder_is_planned(tmp_path: Path, planned: list[Path]):
    d = tmp_path / "set"
    (d / "img").mkdir(parents=True)
    h.png(d / "img" / "a.png")
    s = d / "set.yaml"
    s.write_text("format: images\nimages: img\ntemplates:\n  - {id: t, text: x}\n")
    cache = tmp_path / "cache"
    assert [it.id for it in plan(s, cache).items] == ["a"]
    assert [it.id for it in plan(s, cache).items] == ["a"] and planned == [s]
    h.png(d / "img" / "b.png")
    assert [it.id for it in plan(s, cache).items] == ["a", "b"] and planned == [s, s]


def test_a_changed_schema_file_is_planned_again(tmp_path: Path, planned: list[Path]):
    d = tmp_path / "set"
    d.mkdir()
    schema = d / "schema.json"
    schema.write_text(json.dumps({"type": "object"}))
    s = h.write_set(d, [{"id": "a", "text": "x",
                         "sampling": {"structured_outputs": {"json": "schema.json"}}}])
    cache = tmp_path / "cache"
    plan(s, cache)
    schema.write_text(json.dumps({"type": "array"}))
    after = plan(s, cache)
    assert planned == [s, s]
    assert after.items[0].sampling["structured_outputs"]["json"] == {"type": "array"}


def test_the_whole_plan_is_kept_when_a_shard_takes_part(tmp_path: Path, planned: list[Path]):
    s, _ = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    p = load_set(str(s), cache=cache)
    p.items = p.items[:1]  # as a shard does before the run goes ahead
    p.remember()
    assert len(load_set(str(s), cache=cache).items) == 3 and planned == [s]


def test_a_read_only_set_is_cached_in_the_store(tmp_path: Path, planned: list[Path]):
    s, _ = two_image_set(tmp_path / "ro")
    d = s.parent
    before = sorted(p.name for p in d.rglob("*"))
    for p in [d, *d.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        cache = tmp_path / "store" / ".cache"
        plan(s, cache)
        plan(s, cache)
    finally:
        for p in [d, *d.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert planned == [s] and sorted(p.name for p in d.rglob("*")) == before
    assert len(list((cache / "plans").iterdir())) == 1


def test_a_damaged_entry_is_a_cold_cache(tmp_path: Path, planned: list[Path]):
    s, _ = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    keys = [it.key for it in plan(s, cache).items]
    (entry,) = (cache / "plans").iterdir()
    entry.write_bytes(entry.read_bytes()[:100])
    assert [it.key for it in plan(s, cache).items] == keys and planned == [s, s]


@pytest.mark.process
def test_a_run_resumes_from_a_cached_plan(tmp_path: Path, planned: list[Path], fake_engine):
    """The job on a cached plan: a finished run is a cache hit, and a run with an item left
    fills that item's stub (messages, images) and generates it, with the key it had."""
    s, _ = two_image_set(tmp_path / "set")
    cfg = make_cfg(*TINY, f"prompts.name={s}", f"store.root={tmp_path / 'store'}",
                   "sampling.max_tokens=2", "model.limit_mm_per_prompt.image=1")
    first = Job(cfg, []).run()
    run = Path(first.folder)
    before = read_records(run)
    assert first.status == "complete" and len(before) == 3
    assert Job(cfg, []).run().status == "cached" and planned == [s]
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    left = json.loads(lines[-1])["key"]
    (run / "results.jsonl").write_text("".join(lines[:-1]))  # as if killed before the last
    again = Job(cfg, []).run()
    assert planned == [s] and again.computed + again.errors == 1
    after = read_records(run)
    assert after.keys() == before.keys() and after[left] == {**before[left],
                                                             "time": after[left]["time"]}


def test_a_new_image_in_a_new_subfolder_of_a_glob_is_planned(tmp_path: Path,
                                                              planned: list[Path]):
    d = tmp_path / "set"
    (d / "img" / "a").mkdir(parents=True)
    h.png(d / "img" / "a" / "x.png")
    s = d / "set.yaml"
    s.write_text("format: images\nimages: img/**/*.png\ntemplates:\n  - {id: t, text: x}\n")
    cache = tmp_path / "cache"
    assert [it.id for it in plan(s, cache).items] == ["a/x"]
    assert [it.id for it in plan(s, cache).items] == ["a/x"] and planned == [s]
    (d / "img" / "a" / "b").mkdir()
    h.png(d / "img" / "a" / "b" / "y.png")  # only the new folder's parent changed at first
    assert [it.id for it in plan(s, cache).items] == ["a/b/y", "a/x"] and planned == [s, s]
    h.png(d / "img" / "a" / "b" / "z.png")  # a folder the last plan listed
    assert [it.id for it in plan(s, cache).items] == ["a/b/y", "a/b/z", "a/x"]
    assert planned == [s, s, s]


class _Plant:
    """A pickle payload that would leave a file behind if anything unpickled it."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (Path.write_text, (self.mark, "ran"))


@pytest.mark.parametrize("payload", ["pickle", "garbage", "json"])
def test_a_planted_entry_is_a_cold_cache_and_runs_nothing(tmp_path: Path, planned: list[Path],
                                                          payload: str):
    """Whoever can write the store's cache cannot run code in the runner: an entry is data,
    and one that is not what the plan wrote is a cold cache (the set is planned again)."""
    s, _ = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    keys = [it.key for it in plan(s, cache).items]
    (entry,) = (cache / "plans").iterdir()
    mark = tmp_path / "ran"
    entry.write_bytes({"pickle": pickle.dumps(_Plant(mark)), "garbage": os.urandom(4096),
                       "json": b'{"options": 1}\n[]\n'}[payload])
    assert [it.key for it in plan(s, cache).items] == keys and planned == [s, s]
    assert not mark.exists()


def test_an_entry_is_json_lines_with_plan_time_errors_only(tmp_path: Path,
                                                           planned: list[Path]):
    """An item error a run adds later (tokens) never reaches the entry."""
    s, _ = two_image_set(tmp_path / "set")
    cache = tmp_path / "cache"
    p = load_set(str(s), cache=cache, max_images=1)
    p.items[0].error, p.items[0].error_kind = "too long", "too_long"  # as plan_tokens would
    p.remember()
    (entry,) = (cache / "plans").iterdir()
    head, *items = [json.loads(x) for x in entry.read_text().splitlines()]
    assert [d["id"] for d in items] == ["a", "b", "bad"] and items[0]["error"] is None
    assert list(head["errors"]) == ["2"] and head["errors"]["2"][1] == "too_many_images"
    again = plan(s, cache)
    assert planned == [s] and again.items[0].error is None
