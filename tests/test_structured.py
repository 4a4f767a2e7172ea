"""Structured outputs and per-request sampling without an engine: the checks before the engine
starts, the hash and item keys, OpenAI batch bodies, the json scorer, schema_valid, the CSV
export, the MMMU converter's constraint. (Through the engine: test_real_engine.py.)"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

import fakes
from conftest import ROOT, TINY, make_cfg
from runner.errors import UserError
from runner.plan.load import load_set
from runner.plan.sampling import from_batch_body
from runner.results.runs.export import export_text
from runner.results.runs.load import load_run
from runner.results.scoring.score import score_run
from runner.results.scoring.scorers import score_output
from runner.store.rundir import hashed_config, run_hash

RECEIPTS = ROOT / "prompts" / "receipts"
SCHEMA = json.loads((RECEIPTS / "schema.json").read_text())


def write_set(d: Path, doc: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "set.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return d / "set.yaml"


def items(*extra: dict) -> list[dict]:
    return [{"id": "a", "text": "A?"}, {"id": "b", "text": "B?"}, *extra]


# --- the run's structured_outputs: checked before anything starts, hashed by content --------

@pytest.mark.parametrize("so, words", [
    ("{json:{type:object},regex:a}", ["exactly one of", "json and regex"]),
    ("{regex:'a('}", ["structured_outputs.regex", "not a valid regular expression"]),
    ("{json:nowhere.json}", ["structured_outputs.json", "cannot read the schema file",
                             "nowhere.json"]),
    ("{json:{type:nonsense}}", ["structured_outputs.json", "not a valid JSON schema"]),
    ("{choice:[]}", ["structured_outputs.choice", "non-empty list"]),
])
def test_bad_structured_outputs_is_one_sentence(so: str, words: list[str]):
    cfg = make_cfg(*TINY, f"++sampling.structured_outputs={so}")
    with pytest.raises(UserError) as e:
        run_hash(cfg)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


def test_a_misspelled_constraint_fails_at_composition_naming_it():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="jsonn"):
        make_cfg(*TINY, "sampling.structured_outputs.jsonn={}")


def test_invalid_schema_file_names_the_file(tmp_path: Path, monkeypatch):
    (tmp_path / "bad.json").write_text('{"type": ')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"bad\.json is not valid JSON"):
        run_hash(make_cfg(*TINY, "+sampling.structured_outputs.json=bad.json"))


def test_hash_covers_the_schema_content_not_its_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "b.json").write_text(json.dumps(SCHEMA, indent=4))
    h = {n: run_hash(make_cfg(*TINY, f"+sampling.structured_outputs.json={n}"))
         for n in ("a.json", "b.json")}
    assert h["a.json"] == h["b.json"]
    (tmp_path / "b.json").write_text(json.dumps(SCHEMA | {"required": ["total"]}))
    assert run_hash(make_cfg(*TINY, "+sampling.structured_outputs.json=b.json")) != h["a.json"]
    inline = make_cfg(*TINY, f"+sampling.structured_outputs.json='{json.dumps(SCHEMA)}'")
    assert run_hash(inline) == h["a.json"]  # a JSON string: the same schema
    # unconstrained runs hash as they did before the key existed
    plain = make_cfg(*TINY)
    assert "structured_outputs" not in hashed_config(plain)["sampling"]
    assert run_hash(plain) != h["a.json"]


# --- per-set and per-item overrides ---------------------------------------------------------

def test_item_override_changes_only_that_items_key(tmp_path: Path):
    f = write_set(tmp_path / "s", {"items": items()})
    before = {it.id: it.key for it in load_set(str(f)).items}
    assert all(not it.sampling for it in load_set(str(f)).items)
    f = write_set(tmp_path / "s", {"items": [{"id": "a", "text": "A?"},
                                             {"id": "b", "text": "B?",
                                              "sampling": {"max_tokens": 5}}]})
    after = {it.id: it for it in load_set(str(f)).items}
    assert after["a"].key == before["a"] and after["b"].key != before["b"]
    assert after["b"].sampling == {"max_tokens": 5}
    # a set-level override reaches every item; the item's own wins key by key
    f = write_set(tmp_path / "s", {"sampling": {"max_tokens": 9, "temperature": 0.5},
                                   "items": items({"id": "c", "text": "C?",
                                                   "sampling": {"max_tokens": 3}})})
    got = {it.id: it.sampling for it in load_set(str(f)).items}
    assert got == {"a": {"max_tokens": 9, "temperature": 0.5},
                   "b": {"max_tokens": 9, "temperature": 0.5},
                   "c": {"max_tokens": 3, "temperature": 0.5}}


def test_override_schema_path_is_read_relative_to_the_set(tmp_path: Path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "schema.json").write_text(json.dumps(SCHEMA))
    f = write_set(d, {"items": items({"id": "c", "text": "C?", "sampling": {
        "structured_outputs": {"json": "schema.json"}}})})
    c = load_set(str(f)).items[-1]
    assert c.sampling["structured_outputs"]["json"] == SCHEMA  # the content: keys cover it
    key = c.key
    (d / "schema.json").write_text(json.dumps(SCHEMA | {"required": ["total"]}))
    assert load_set(str(f)).items[-1].key != key


@pytest.mark.parametrize("fmt", ["yaml", "jsonl"])
def test_unknown_override_key_names_file_line_and_key(tmp_path: Path, fmt: str):
    bad = {"id": "c", "text": "C?", "sampling": {"max_token": 5}}
    if fmt == "yaml":
        f = write_set(tmp_path / "s", {"items": items(bad)})
        line = f"{f} line 6"  # items:, then two lines per item
    else:
        f = tmp_path / "s.jsonl"
        f.write_text("".join(json.dumps(x) + "\n" for x in items(bad)))
        line = f"{f} line 3"
    with pytest.raises(UserError) as e:
        load_set(str(f))
    assert line in str(e.value) and "unknown sampling key(s) max_token" in str(e.value)


def test_bad_set_level_constraint_names_the_file(tmp_path: Path):
    f = write_set(tmp_path / "s", {"sampling": {"structured_outputs": {"choice": ["A"],
                                                                      "regex": "A"}},
                                   "items": items()})
    with pytest.raises(UserError, match=rf"{f}: sampling.structured_outputs: set exactly one"):
        load_set(str(f))


# --- OpenAI batch bodies, as `vllm run-batch` honors them -----------------------------------

def test_batch_bodies_become_overrides():
    plan = load_set("receipts/batch", ROOT / "prompts")
    got = {it.id: it.sampling for it in plan.items}
    assert got["b-1"] == {"max_tokens": 7}
    assert got["b-2"] == {"max_tokens": 9, "temperature": 0.7, "seed": 1}
    assert got["b-3"] == {"max_tokens": 5}  # max_completion_tokens
    assert got["b-4"] == {"max_tokens": 200, "structured_outputs": {"json": SCHEMA}}
    assert plan.ignored == {"logprobs": 1, "top_logprobs": 1}
    assert plan.items[0].metadata["body"]["max_tokens"] == 7  # the body is still kept


def test_batch_body_fields():
    where, base = "f line 1", Path(".")
    over, ignored = from_batch_body({"model": "m", "max_tokens": 5, "max_completion_tokens": 3,
                                     "stop": "END", "n": 2, "presence_penalty": 0.5,
                                     "frequency_penalty": 0.25, "top_p": 0.9,
                                     "response_format": {"type": "json_object"},
                                     "logit_bias": {"1": 2}, "stream": True}, where, base)
    assert over == {"max_tokens": 3, "stop": ["END"], "n": 2, "presence_penalty": 0.5,
                    "frequency_penalty": 0.25, "top_p": 0.9,
                    "structured_outputs": {"json_object": True}}
    assert ignored == ["logit_bias", "stream"]
    assert from_batch_body({"response_format": {"type": "text"}}, where, base) == ({}, [])
    with pytest.raises(UserError, match="json_schema.schema"):
        from_batch_body({"response_format": {"type": "json_schema", "json_schema": {}}},
                        where, base)


# --- scoring and export ---------------------------------------------------------------------

def test_json_scorer_fields():
    want = {"merchant": "CAFE PIXEL", "total": "4.30", "meta": {"currency": "EUR", "n": 2}}
    s = score_output("json", '{"merchant": "cafe pixel.", "total": 4.3, '
                             '"meta": {"currency": "USD", "n": 2}}', want)
    assert s.fields == {"merchant": True, "total": True, "meta.currency": False, "meta.n": True}
    assert s.score == 0.75 and not s.correct and "meta.currency" in s.reason
    s = score_output("json", 'Sure: {"merchant": "CAFE PIXEL", "total": "4.30", '
                             '"meta": {"currency": "EUR", "n": 2}} done', json.dumps(want))
    assert s.correct
    s = score_output("json", "no json here", want)
    assert s.score == 0 and s.fields is not None and not any(s.fields.values())


def records() -> list[dict]:
    so_choice = {"structured_outputs": {"choice": ["EUR", "USD"]}, "max_tokens": 4}
    return [
        fakes.record("r1", '{"merchant": "CAFE PIXEL", "total": "4.30", "items": 2}',
                     expected={"merchant": "CAFE PIXEL", "total": "4.30", "items": 2},
                     scorer="json"),
        fakes.record("r2", '{"merchant": "DELI", "total": "9.99", "items": 2}',
                     expected={"merchant": "DELI 42", "total": "8.95", "items": 4},
                     scorer="json"),
        fakes.record("r3", '{"merchant": "X"}', expected={"merchant": "X", "total": "1.00",
                                                          "items": 1}, scorer="json"),
        fakes.record("c1", "EUR", sampling=so_choice),
        fakes.record("c2", "GBP", sampling=so_choice),
        fakes.record("free", "anything", sampling={"structured_outputs": {}}),
    ]


def test_field_accuracies_and_schema_valid_in_metrics(tmp_path: Path):
    schema = {"type": "object", "required": ["merchant", "total", "items"]}
    d = fakes.write_run(tmp_path, "run", records(), config={
        "prompts": {"name": "none"}, "sampling": {"structured_outputs": {"json": schema}}})
    m = score_run(d)
    assert m["fields"] == {"items": {"accuracy": 0.3333, "scored": 3},
                           "merchant": {"accuracy": 0.6667, "scored": 3},
                           "total": {"accuracy": 0.3333, "scored": 3}}
    assert (m["scored"], m["correct"]) == (3, 1)
    # json: r1, r2 valid, r3 misses required fields; choice: c1 valid, c2 not; free unchecked
    assert (m["schema_valid"], m["constrained"]) == (0.6, 5)
    rows = [json.loads(x) for x in (d / "scores.jsonl").read_text().splitlines()]
    assert rows[1]["fields"] == {"merchant": False, "total": False, "items": False}


def test_unconstrained_run_has_no_schema_valid(tmp_path: Path):
    d = fakes.write_run(tmp_path, "run", [fakes.record("a", "x", expected="x")],
                        config={"prompts": {"name": "none"}})
    assert "schema_valid" not in score_run(d) and "fields" not in score_run(d, force=True)


def test_csv_export_flattens_json_outputs(tmp_path: Path):
    d = fakes.write_run(tmp_path, "run", [
        fakes.record("a", '{"merchant": "CAFE", "total": "4.30", "address": {"city": "Lyon"}, '
                          '"lines": [1, 2]}', expected={"merchant": "CAFE"}),
        fakes.record("b", '{"merchant": "DELI", "currency": "USD"}'),
        fakes.record("c", "not json"), fakes.record("d", error="boom")])
    rows = list(csv.DictReader(io.StringIO(export_text(load_run(d), "csv"))))
    assert list(rows[0])[-5:] == ["output.merchant", "output.total", "output.address.city",
                                  "output.lines", "output.currency"]
    a, b, c, _ = rows
    assert (a["output.merchant"], a["output.address.city"], a["output.lines"]) == \
        ("CAFE", "Lyon", "[1, 2]")
    assert a["expected"] == '{"merchant": "CAFE"}'
    assert (b["output.merchant"], b["output.currency"], b["output.total"]) == ("DELI", "USD", "")
    assert c["output"] == "not json" and c["output.merchant"] == ""


def test_receipts_set_plans(tmp_path: Path):
    shutil.copytree(RECEIPTS, tmp_path / "receipts")
    plan = load_set("receipts", tmp_path)
    so = {it.id: it.sampling.get("structured_outputs") for it in plan.items}
    assert so["receipt_1"] == {"json": SCHEMA} and so["receipt_1_free"] == {}
    assert so["receipt_3_currency"] == {"choice": ["EUR", "GBP", "USD"]}
