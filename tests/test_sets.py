"""Prompt set formats, whole-set errors, the token plan, and one end-to-end run of a hostile set
through the real engine (marker `engine`: one engine start)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import hostile as h
import pytest
from hostile import hostile_set

from conftest import FAKE, ROOT, TINY, make_cfg, runner
from runner.errors import UserError
from runner.plan.load import load_plan, load_set
from runner.plan.tokens import TokenCounter, plan_tokens, show_plan

EX = ROOT / "prompts" / "examples"


@pytest.fixture
def d(tmp_path: Path) -> Path:
    shutil.copytree(EX, tmp_path / "ex", ignore=shutil.ignore_patterns(".cache"))
    return tmp_path / "ex"


# --- formats ----------------------------------------------------------------------------------


def test_yaml_items_carry_metadata_scorer_and_turns():
    p = load_set("examples/items", ROOT / "prompts")
    chart, receipt, chat = p.items
    assert chart.metadata == {"source": "sample", "difficulty": "easy"}
    assert (chart.scorer, receipt.scorer) == ("contains", "numeric:0.01")  # set default, own
    assert chart.messages[0] == {"role": "system", "content": "Answer briefly."}
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user"]
    assert chat.messages[0]["content"] == "You read tables."
    assert chat.text == "Which city is largest?"


def test_images_times_templates_is_a_cross_product(d: Path):
    p = load_set(str(d / "folder.yaml"))
    assert p.format == "images" and len(p.items) == 3 * 2
    assert [it.id for it in p.items[:2]] == ["bar_chart:describe", "bar_chart:numbers"]
    num = p.items[1]
    assert num.text == "List every number you can read in bar_chart." and num.scorer == "contains"
    assert num.images[0].file == d / "images" / "bar_chart.png"
    # a glob, one template: ids are the bare file names
    (d / "images" / "sub").mkdir()
    h.png(d / "images" / "sub" / "x.png")
    (d / "g.yaml").write_text("format: images\nimages: images/**/*.png\n"
                              "templates: [{id: t, text: Hi}]\n")
    assert [it.id for it in load_set(str(d / "g.yaml")).items] == [
        "bar_chart", "receipt", "sub/x", "table"]


@pytest.mark.parametrize("body, msg", [
    ("format: images\nimages: nowhere/\ntemplates: [{id: t, text: Hi}]\n", "does not exist"),
    ("format: images\nimages: nowhere/*.png\ntemplates: [{id: t, text: Hi}]\n", "does not exist"),
    ("format: images\nimages: images/*.gif\ntemplates: [{id: t, text: Hi}]\n", "matches no image"),
    ("format: images\nimages: images/\n", "needs 'templates:'"),
    ("root: missing/\nitems: [{id: a, text: x}]\n", "image root 'root: missing/'"),
    ("format: jsonl\nfile: nope.jsonl\n", "needs 'file:'"),
    ("format: csv\nitems: [{id: a, text: x}]\n", "format 'csv'"),
    ("itemz: []\n", "unknown set key"),
])
def test_whole_set_problems_name_the_file(d: Path, body: str, msg: str):
    (d / "bad.yaml").write_text(body)
    with pytest.raises(UserError, match=msg) as e:
        load_set(str(d / "bad.yaml"))
    assert str(d / "bad.yaml") in str(e.value)


def test_jsonl_items_are_read_as_a_stream(d: Path):
    p = load_set(str(d / "stream.jsonl"))
    assert p.format == "jsonl" and [it.id for it in p.items][:2] == ["chart", "receipt"]
    assert len(p.items[2].images) == 2 and p.items[0].scorer == "contains"
    # nothing past `limit` is read: a broken line further down goes unnoticed
    with open(d / "stream.jsonl", "a") as f:
        f.write("{not json\n")
    assert len(load_set(str(d / "stream.jsonl"), limit=2).items) == 2
    with pytest.raises(UserError, match=r"stream.jsonl line 5: not valid JSON"):
        load_set(str(d / "stream.jsonl"))


def test_a_set_file_can_declare_a_jsonl_file(d: Path):
    (d / "set.yaml").write_text("name: mine\nsystem: Be brief.\nformat: jsonl\n"
                                "file: stream.jsonl\n")
    p = load_set(str(d))  # a folder with a set.yaml
    assert p.name == "mine" and p.items[0].messages[0]["content"] == "Be brief."


def test_openai_batch_files_run_as_is(d: Path):
    p = load_set(str(d / "batch.jsonl"), cache=d.parent / "cache")
    assert p.format == "batch" and [it.id for it in p.items] == ["req-1", "req-2", "req-3", "req-4"]
    r1, r2, r3, r4 = p.items
    assert r1.images[0].file == d / "images" / "bar_chart.png"
    assert r1.metadata == {"body": {"model": "pixtral", "max_tokens": 64}}
    # part order is kept: the image comes first in req-2
    assert [c["type"] for c in r2.messages[0]["content"]] == ["image_url", "text"]
    assert r3.images[0].file.parent == d.parent / "cache" / "data"  # by content, in the cache
    assert r4.messages == [{"role": "system", "content": "You read tables."},
                           {"role": "user", "content": "Say hello."}]


def test_batch_lines_with_file_urls_and_bad_parts(d: Path):
    ok = {"custom_id": "a", "body": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x"},
        {"type": "image_url", "image_url": (d / "images" / "table.png").as_uri()}]}]}}
    (d / "b.jsonl").write_text(json.dumps(ok) + "\n")
    assert load_set(str(d / "b.jsonl")).items[0].images[0].file == d / "images" / "table.png"
    bad = {"custom_id": "b", "body": {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {}}]}]}}
    (d / "b.jsonl").write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError, match=r"b.jsonl line 2: request 'b': unsupported content"):
        load_set(str(d / "b.jsonl"))


def test_duplicate_ids_name_both_lines(d: Path):
    (d / "dup.jsonl").write_text('{"id": "a", "text": "x"}\n\n{"id": "a", "text": "y"}\n')
    with pytest.raises(UserError, match=r"dup.jsonl line 3: item 'a': duplicate item id 'a' "
                                        r"\(first at .*dup.jsonl line 1\)"):
        load_set(str(d / "dup.jsonl"))
    f = h.write_set(d / "y", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(UserError, match=r"set.yaml line 4: item 'a': duplicate item id 'a'"):
        load_set(str(f))


@pytest.mark.parametrize("name, msg", [
    ("empty.jsonl", "no items"), ("empty.yaml", "no items"), ("nope", "Unknown prompt set")])
def test_empty_and_unknown_sets(d: Path, name: str, msg: str):
    (d / name).write_text("")
    with pytest.raises(UserError, match=msg):
        load_set(name if name == "nope" else str(d / name), d)


def test_find_set_by_name_folder_and_file(d: Path):
    assert load_set("examples/batch", ROOT / "prompts").format == "batch"
    (d / "stream.jsonl").rename(d / "set.jsonl")
    assert load_set("ex", d.parent).format == "jsonl"  # <root>/<name>/set.jsonl
    assert load_set(str(EX / "folder.yaml")).format == "images"
    assert load_set(str(ROOT / "prompts" / "sample")).name == "sample"


# --- config, item errors and the token plan ---------------------------------------------------


BAD = {"zero", "truncated", "fake", "bomb", "five_images", "too_long"}


def test_item_errors_at_plan_level(tmp_path: Path, tiny_weights: Path):
    f = hostile_set(tmp_path / "h")
    cfg = make_cfg(*TINY, f"prompts.name={f}", "model.limit_mm_per_prompt.image=2")
    plan = load_plan(cfg)
    toks = plan_tokens(cfg, plan)
    assert {it.id for it in plan.items if it.error} == BAD
    err = {it.id: it.error for it in plan.items}
    assert "limit_mm_per_prompt allows 2" in err["five_images"]
    assert "over model.max_model_len=4096" in err["too_long"]
    assert all(t.exact for t in toks) and toks[0].prompt_tokens == 310  # vLLM's count
    tot = show_plan(cfg, plan, toks, stored={plan.items[0].key})
    assert tot["stored"] == 1 and tot["errors"] == len(BAD)
    with pytest.raises(UserError, match="Item 'zero'"):
        load_plan(make_cfg(*TINY, f"prompts.name={f}", "prompts.on_item_error=fail"))


def test_token_plan_equals_a_full_mistral_common_encode(tmp_path: Path):
    """The 1x1 stand-in trick gives what encoding the real images gives."""
    from mistral_common.protocol.instruct.chunk import ImageURLChunk, TextChunk
    from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    sizes = [(1, 1), (17, 33), (320, 224), (1024, 1024), (1500, 300), (3000, 2000), (5, 4000)]
    files = [h.png(tmp_path / f"{w}x{h_}.png", (w, h_)) for w, h_ in sizes]
    f = h.write_set(tmp_path, [{"id": "all", "text": "Compare.", "images": [
        p.name for p in files]}, {"id": "one", "text": "x", "images": [files[2].name]}],
        system="Be brief.")
    cfg = make_cfg(*TINY, f"prompts.name={f}", "model.limit_mm_per_prompt.image=9")
    plan = load_plan(cfg)
    counter = TokenCounter(cfg.model)
    for it, t in zip(plan.items, plan_tokens(cfg, plan), strict=True):
        chunks = [TextChunk(text=it.text)] + [ImageURLChunk(image_url=im.file.as_uri())
                                              for im in it.images]
        req = ChatCompletionRequest(messages=[SystemMessage(content="Be brief."),
                                              UserMessage(content=chunks)])
        assert t.prompt_tokens == len(counter.tok.encode_chat_completion(req).tokens)


def test_hf_models_get_a_labelled_estimate():
    cfg = make_cfg("model=pixtral_large_w4a16", "model.path=/nonexistent")
    plan = load_set("sample", ROOT / "prompts")
    toks = plan_tokens(cfg, plan)
    assert not any(t.exact for t in toks) and toks[0].prompt_tokens > 290


# --- the command line (no engine) --------------------------------------------------------------


def test_dry_run_prints_the_token_plan_and_writes_nothing(tmp_path: Path,
                                                          tiny_weights: Path):
    p = runner(*TINY, "dry_run=true", f"prompts.name={EX / 'batch.jsonl'}",
               f"store.root={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    out = " ".join(p.stderr.split())
    assert "req-3" in out and "exact" in out and "786" in out  # total prompt tokens
    assert not any(x for x in tmp_path.iterdir() if not x.name.startswith("."))


def test_on_item_error_fail_stops_the_run_before_anything_is_stored(tmp_path: Path):
    """(The engine, started beside the plan, is stopped at once: test_overlap.py.)"""
    f = hostile_set(tmp_path / "h")
    p = runner(*TINY, f"prompts.name={f}", "prompts.on_item_error=fail",
               f"store.root={tmp_path / 'store'}", env=FAKE)
    assert p.returncode == 2 and "Item 'zero'" in p.stderr and "empty file" in p.stderr
    # no run folder, lock or log; only the converted images' copies in the store's cache
    assert [x.name for x in (tmp_path / "store").iterdir()] == [".cache"]
    assert [x.name for x in (tmp_path / "store" / ".cache").iterdir()] == ["images"]
