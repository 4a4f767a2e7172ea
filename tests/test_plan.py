"""Prompt sets -> items and chat requests, with no model loaded."""

import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from runner.errors import UserError
from runner.plan.load import load_set


def test_sample_set_builds_openai_style_requests():
    p = load_set("sample", ROOT / "prompts")
    ids = [it.id for it in p.items]
    assert ids == ["bar_chart", "receipt_total", "table_lookup", "compare_shapes", "text_only"]
    chart = p.items[0]
    (text, image) = chart.messages[0]["content"]
    assert text == {"type": "text", "text": chart.text}
    # by path, restricted to the set's folder: vLLM reads the file itself
    assert image["type"] == "image_url"
    assert image["image_url"]["url"] == (p.root / "images/bar_chart.png").as_uri()
    assert len(p.items[3].images) == 2
    assert p.items[4].messages == [{"role": "user", "content": p.items[4].text}]
    assert p.items[2].expected == "Berlin"


@pytest.fixture
def set_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mine"
    shutil.copytree(ROOT / "prompts" / "sample", d)
    return d


def test_item_keys_follow_content_and_image_bytes(set_dir: Path):
    before = {it.id: it.key for it in load_set(str(set_dir / "set.yaml")).items}
    with open(set_dir / "images/receipt.png", "ab") as f:
        f.write(b"\0")  # same path, different bytes
    after = {it.id: it.key for it in load_set(str(set_dir / "set.yaml")).items}
    assert {i for i in before if before[i] != after[i]} == {"receipt_total"}


def test_system_prompt_changes_keys(set_dir: Path):
    a = load_set(str(set_dir / "set.yaml")).items[0]
    b = load_set(str(set_dir / "set.yaml"), system="Answer in one word.").items[0]
    assert b.messages[0] == {"role": "system", "content": "Answer in one word."}
    assert a.key != b.key


def test_unknown_set_names_what_exists():
    with pytest.raises(UserError, match="Unknown prompt set 'nope'.*sample"):
        load_set("nope", ROOT / "prompts")


def test_image_outside_the_set_is_refused(set_dir: Path):
    (set_dir / "set.yaml").write_text(
        "items:\n  - id: a\n    text: hi\n    images: [../../etc/passwd]\n")
    with pytest.raises(UserError, match="outside the set's folder"):
        load_set(str(set_dir / "set.yaml"))


def test_escaping_symlink_is_refused(set_dir: Path, tmp_path: Path):
    (tmp_path / "secret.png").write_bytes(b"x")
    (set_dir / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    (set_dir / "set.yaml").write_text(
        "items:\n  - id: a\n    text: hi\n    images: [images/link.png]\n")
    with pytest.raises(UserError, match="outside"):
        load_set(str(set_dir / "set.yaml"))


@pytest.mark.parametrize("body, msg", [
    ("items:\n  - id: a\n    text: x\n  - id: a\n    text: y\n", "duplicate item id 'a'"),
    ("items: []\n", "no items"),
    ("items:\n  - id: a\n    text: [unclosed\n", r"line \d+: not valid YAML"),
    ("items:\n  - id: a\n    txt: hi\n", "unknown key"),
    ("items:\n  - id: a\n    text: hi\n    images: [images/missing.png]\n", "not found"),
])
def test_bad_sets_fail_with_one_clear_sentence(set_dir: Path, body: str, msg: str):
    (set_dir / "set.yaml").write_text(body)
    with pytest.raises(UserError, match=msg) as e:
        load_set(str(set_dir / "set.yaml"))
    assert str(set_dir / "set.yaml") in str(e.value)
