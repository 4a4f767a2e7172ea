"""Benchmark importers (runner/benchmarks/): small parquet files in each benchmark's hub schema,
built here, imported, and compared with the requests written down by hand from reading
mistral-evals' eval/tasks/<bench>.py. No engine."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets  # in requirements/cpu.lock: a missing one fails this file, never skips it
import pytest
import yaml
from PIL import Image as PILImage

from conftest import ROOT
from runner.benchmarks.__main__ import main
from runner.benchmarks.build import import_benchmark
from runner.errors import UserError
from runner.plan.load import load_set

# The harness's prompts, copied by hand from mistral-evals' eval/tasks/<bench>.py (PROMPT, at
# the commits runner/benchmarks/harness.yaml names), not read from harness.yaml: an edit
# there that leaves the harness fails here.
COT = """Analyze the image and question carefully, using step-by-step reasoning.
First, describe any image provided in detail. Then, present your reasoning. And finally your \
final answer in this format:
Final Answer: <answer>
where <answer> is:
- The single correct letter choice A, B, C, D, E, F, etc. when options are provided. Only \
include the letter.
- Your direct answer if no options are given, as a single phrase or number.
- If your answer is a number, only include the number without any unit.
- If your answer is a word or phrase, do not paraphrase or reformat the text you see in the \
image.
- You cannot answer that the question is unanswerable. You must either pick an option or \
provide a direct answer.
IMPORTANT: Remember, to end your answer with Final Answer: <answer>."""  # mmmu, mathvista
CHARTQA = """Analyze the image and question carefully, using step-by-step reasoning.
First, describe any image provided in detail. Then, present your reasoning. And finally your \
final answer in this format:
Final Answer: <answer>
where <answer> follows the following instructions:
- <answer> should should be a single phrase or number.
- <answer> should not paraphrase or reformat the text in the image.
- If <answer> is a ratio, it should be a decimal value like 0.25 instead of 1:4.
- If the question is a Yes/No question, <answer> should be Yes/No.
- If <answer> is a number, it should not contain any units.
- If <answer> is a percentage, it should include a % sign.
- If <answer> is an entity, it should include the full label from the graph.
IMPORTANT: Remember, to end your answer with Final Answer: <answer>."""
VQAV2 = """- Answer the question using a single word, number, or short phrase. Use as few words \
as possible.
- If the answer is a number, report it as a number, i.e. 2, not Two, and only include the \
number without any unit.
- If the question is Yes/No, answer with Yes/No, and nothing else (no likely, unknown, etc.).
- You cannot answer that the question is unanswerable. You must answer."""


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 6), color).save(buf, "PNG")
    return buf.getvalue()


RED, BLUE, GREEN = png((255, 0, 0)), png((0, 0, 255)), png((0, 255, 0))


def parquet(path: Path, rows: dict, features: dict) -> Path:
    """A parquet file as the hub stores it (Image columns as {bytes, path} structs)."""
    f = datasets.Features(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=f).to_parquet(str(path))
    return path


def img(b: bytes | None) -> dict | None:
    return None if b is None else {"bytes": b, "path": None}


def items_of(set_file: Path) -> list[dict]:
    lines = (set_file.parent / "items.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def url(set_file: Path, data: bytes) -> str:
    """The URL the importer gave these bytes (found by content, so the test knows no hash)."""
    for f in (set_file.parent / "images").iterdir():
        if f.read_bytes() == data:
            return f"images/{f.name}"
    raise AssertionError("image not stored")


def I(u: str) -> dict:  # noqa: E743
    return {"type": "image_url", "image_url": {"url": u}}


def T(t: str) -> dict:
    return {"type": "text", "text": t}


S, V = datasets.Value("string"), datasets.Image()


def mmmu_parquet(tmp: Path) -> Path:
    feats = {"id": S, "question": S, "options": S, "explanation": S,
             **{f"image_{k}": V for k in range(1, 8)}, "img_type": S, "answer": S,
             "topic_difficulty": S, "question_type": S, "subfield": S}
    rows = {
        "id": ["validation_Art_Theory_1", "validation_Math_2"],
        "question": ["Compare <image 1> and <image 2>. Which is larger?", "What is x? <image 1>"],
        "options": ["['<image 1>', 'the second <image 2>', 'same']", "[]"],
        "explanation": ["", ""],
        "image_1": [img(RED), img(GREEN)], "image_2": [img(BLUE), None],
        **{f"image_{k}": [None, None] for k in range(3, 8)},
        "img_type": ["['Paintings']", "['Diagrams']"], "answer": ["A", "['1.5', '3/2']"],
        "topic_difficulty": ["Easy", "Hard"], "question_type": ["multiple-choice", "open"],
        "subfield": ["Art History", "Geometry"]}
    return parquet(tmp / "mmmu" / "data" / "validation-00000-of-00001.parquet", rows, feats)


def test_mmmu_matches_the_harness(tmp_path: Path) -> None:
    src = mmmu_parquet(tmp_path)
    f, n = import_benchmark("mmmu", str(src.parent.parent), tmp_path / "sets" / "mmmu")
    a, b = items_of(f)
    r, bl, g = url(f, RED), url(f, BLUE), url(f, GREEN)
    # by hand from eval/tasks/mmmu.py: question + "\n" + "A. …" lines, split at <image n>
    # (inside the options too), whitespace-only chunks dropped, PROMPT after the last text
    assert a["messages"] == [{"role": "user", "content": [
        T("Compare "), I(r), T(" and "), I(bl), T(". Which is larger?\nA. "), I(r),
        T("\nB. the second "), I(bl), T("\nC. same\n" + COT)]}]
    assert a["expected"] == ["A"]
    assert a["metadata"]["subfield"] == "Art History"
    assert a["metadata"]["question_type"] == "multiple-choice"
    assert a["metadata"]["options"] == ["<image 1>", "the second <image 2>", "same"]
    assert a["tags"] == ["Art_Theory", "Art History"]
    # a trailing image: the prompt is a text part of its own; a list answer stays a list
    assert b["messages"][0]["content"] == [T("What is x? "), I(g), T(COT)]
    assert b["expected"] == ["1.5", "3/2"]
    # three distinct images stored once each, whatever the number of parts naming them
    assert len(list((f.parent / "images").iterdir())) == 3
    doc = yaml.safe_load(f.read_text())
    assert doc["sampling"] == {"temperature": 0.0, "max_tokens": 2048}
    assert doc["scorer"] == ["explicit_prompt_relaxed_correctness",
                             "anywhere_in_answer_relaxed_correctness"]
    # the planner reads it: parts in the same order, the set's sampling on every item
    plan = load_set(str(f))
    parts = plan.items[0].messages[-1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text",
                                          "image_url", "text", "image_url", "text"]
    assert parts[1]["image_url"]["url"] == parts[5]["image_url"]["url"]
    assert plan.items[0].sampling == {"temperature": 0.0, "max_tokens": 2048}
    assert plan.items[1].expected == ["1.5", "3/2"]


def test_mmmu_constrain_and_errors(tmp_path: Path) -> None:
    """The old converter's intents: option letters as a choice constraint, clear errors."""
    src = mmmu_parquet(tmp_path)
    f, _ = import_benchmark("mmmu", str(src), tmp_path / "m", constrain=True)
    a, b = items_of(f)
    assert a["sampling"] == {"structured_outputs": {"choice": ["A", "B", "C"]}}
    assert "sampling" not in b  # open questions stay free
    assert load_set(str(f)).items[0].sampling == {"temperature": 0.0, "max_tokens": 2048,
                                                  **a["sampling"]}
    with pytest.raises(UserError, match="exists"):
        import_benchmark("mmmu", str(src), tmp_path / "m")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "<image 1> ?", "options": "[]",
                               "question_type": "open", "answer": "1",
                               "image_1": "nope.png"}) + "\n")
    with pytest.raises(UserError, match="row 'x' image_1"):
        import_benchmark("mmmu", str(bad), tmp_path / "b")


def test_mathvista_matches_the_harness(tmp_path: Path) -> None:
    feats = {"pid": S, "question": S, "image": S, "decoded_image": V,
             "choices": datasets.Sequence(S), "unit": S, "precision": datasets.Value("float64"),
             "answer": S, "question_type": S, "answer_type": S,
             "metadata": {"category": S, "context": S, "grade": S, "language": S,
                          "skills": datasets.Sequence(S), "source": S, "split": S, "task": S},
             "query": S}
    meta = {"category": "math-targeted-vqa", "context": "geometry diagram", "grade": "high school",
            "language": "english", "skills": ["geometry reasoning"], "source": "Geometry3K",
            "split": "testmini", "task": "geometry problem solving"}
    rows = {"pid": ["1", "2"], "question": ["q1", "q2"], "image": ["images/1.jpg", "images/2.jpg"],
            "decoded_image": [img(RED), img(BLUE)], "choices": [["3", "4", "5"], None],
            "unit": [None, "cm"], "precision": [None, 1.0], "answer": ["4", "2.5"],
            "question_type": ["multi_choice", "free_form"],
            "answer_type": ["text", "float"], "metadata": [meta, meta],
            "query": ["Hint: pick.\nQuestion: q1\nChoices:\n(A) 3\n(B) 4\n(C) 5", "Q: q2"]}
    src = parquet(tmp_path / "testmini-00000-of-00001.parquet", rows, feats)
    f, _ = import_benchmark("mathvista", str(src), tmp_path / "mv")
    a, b = items_of(f)
    assert a["messages"] == [{"role": "user", "content": [
        I(url(f, RED)), T("Hint: pick.\nQuestion: q1\nChoices:\n(A) 3\n(B) 4\n(C) 5\n" + COT)]}]
    assert (a["expected"], b["expected"]) == ("B", "2.5")  # a choice becomes its letter
    assert b["metadata"]["question_type"] == "free_form"
    assert b["metadata"]["answer_type"] == "float" and b["metadata"]["task"] == \
        "geometry problem solving"
    assert yaml.safe_load(f.read_text())["sampling"] == {"temperature": 0.0, "max_tokens": 2048}


def test_chartqa_matches_the_harness(tmp_path: Path) -> None:
    feats = {"type": S, "question": S, "answer": S, "image": V}
    rows = {"type": ["human_test", "augmented_test"], "question": ["How many?", "Max?"],
            "answer": ["12", "Japan"], "image": [img(RED), img(RED)]}
    src = parquet(tmp_path / "c" / "data" / "test-00000-of-00001.parquet", rows, feats)
    f, n = import_benchmark("chartqa", str(tmp_path / "c"), tmp_path / "cq")
    a, b = items_of(f)
    assert n == 2 and src.exists()
    assert a["messages"][0]["content"] == [
        I(url(f, RED)), T("How many?\n" + CHARTQA)]
    assert (a["expected"], a["metadata"], b["metadata"]) == \
        ("12", {"type": "human_test"}, {"type": "augmented_test"})
    assert len(list((f.parent / "images").iterdir())) == 1  # the same chart, stored once


def test_docvqa_matches_the_harness(tmp_path: Path) -> None:
    feats = {"questionId": S, "question": S, "question_types": datasets.Sequence(S),
             "image": V, "docId": datasets.Value("int64"), "ucsf_document_id": S,
             "ucsf_document_page_no": S, "answers": datasets.Sequence(S), "data_split": S}
    rows = {"questionId": ["49153"], "question": ["What is the date?"],
            "question_types": [["handwritten"]], "image": [img(GREEN)], "docId": [14465],
            "ucsf_document_id": ["pybv0228"], "ucsf_document_page_no": ["81"],
            "answers": [["1/8/93", "Jan 8 93"]], "data_split": ["val"]}
    parquet(tmp_path / "d" / "DocVQA" / "validation-00000-of-00001.parquet", rows, feats)
    parquet(tmp_path / "d" / "DocVQA" / "test-00000-of-00001.parquet", rows, feats)
    f, n = import_benchmark("docvqa", str(tmp_path / "d"), tmp_path / "dv")
    (a,) = items_of(f)
    assert a["id"] == "49153" and n == 1  # the validation file only
    assert a["messages"][0]["content"] == [
        I(url(f, GREEN)), T("What is the date?\nAnswer the question using a single word or "
                            "phrase.")]
    assert a["expected"] == ["1/8/93", "Jan 8 93"]
    assert a["metadata"]["question_types"] == ["handwritten"]
    doc = yaml.safe_load(f.read_text())
    assert doc["sampling"] == {"temperature": 0.0, "max_tokens": 10}
    assert doc["scorer"] == ["anls"]


def test_vqav2_matches_the_harness(tmp_path: Path) -> None:
    ans = [{"answer": S, "answer_confidence": S, "answer_id": datasets.Value("int64")}]
    feats = {"question_type": S, "multiple_choice_answer": S, "answers": ans,
             "image_id": datasets.Value("int64"), "answer_type": S,
             "question_id": datasets.Value("int64"), "question": S, "image": V}
    answers = [{"answer": "2", "answer_confidence": "yes", "answer_id": 1},
               {"answer": "two", "answer_confidence": "maybe", "answer_id": 2}]
    rows = {"question_type": ["how many"], "multiple_choice_answer": ["2"],
            "answers": [answers], "image_id": [42], "answer_type": ["number"],
            "question_id": [42001], "question": ["How many cats?"], "image": [img(BLUE)]}
    src = parquet(tmp_path / "validation.parquet", rows, feats)
    f, _ = import_benchmark("vqav2", str(src), tmp_path / "vq")
    (a,) = items_of(f)
    assert a["messages"][0]["content"] == [
        I(url(f, BLUE)), T("How many cats?\n" + VQAV2)]
    assert a["expected"] == ["2", "two"]  # answer objects reduced to their strings
    assert a["metadata"]["answer_type"] == "number"
    doc = yaml.safe_load(f.read_text())
    assert (doc["sampling"], doc["scorer"]) == ({"temperature": 0.0, "max_tokens": 10},
                                                ["vqa_match"])


def test_mm_mt_bench_one_item_per_turn(tmp_path: Path) -> None:
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1"}]},
            {"role": "assistant", "content": "R1"},
            {"role": "user", "content": [{"type": "text", "text": "Q2"}]},
            {"role": "assistant", "content": "R2"}]
    feats = {"category": S, "conversation": S, "image": V}
    rows = {"category": ["charts"], "conversation": [json.dumps(conv)], "image": [img(RED)]}
    src = parquet(tmp_path / "eval.parquet", rows, feats)
    f, n = import_benchmark("mm_mt_bench", str(src), tmp_path / "mt")
    t0, t1 = items_of(f)
    r = url(f, RED)
    assert n == 2
    assert t0["messages"] == [{"role": "user", "content": [I(r), T("Q1")]}]
    assert t1["messages"] == [{"role": "user", "content": [I(r), T("Q1")]},
                              {"role": "assistant", "content": [T("R1")]},  # the reference
                              {"role": "user", "content": [T("Q2")]}]
    assert (t0["expected"], t1["expected"]) == ("R1", "R2")
    assert t1["metadata"] == {"category": "charts", "turn": 1}
    doc = yaml.safe_load(f.read_text())
    assert doc["sampling"] == {"temperature": 0.0, "max_tokens": 4096} and "scorer" not in doc
    plan = load_set(str(f))
    assert [m["role"] for m in plan.items[1].messages] == ["user", "assistant", "user"]


def test_cli_limit_and_bad_source(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = mmmu_parquet(tmp_path)
    assert main(["import", "mmmu", "--source", str(src), "--out", str(tmp_path / "o"),
                 "--limit", "1"]) == 0
    assert [i["id"] for i in items_of(tmp_path / "o" / "set.yaml")] == \
        ["validation_Art_Theory_1"]
    capsys.readouterr()
    assert main(["import", "mmmu", "--source", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "p")]) != 0
    err = capsys.readouterr().err
    assert err == f"error: --source {tmp_path / 'missing'}: no such file or folder, and not a " \
        "dataset id.\n"


def test_mmmu_from_jsonl_image_forms(tmp_path: Path) -> None:
    """A JSONL export: images as a path beside it, base64, and {"bytes": base64}."""
    import base64

    (tmp_path / "pic.png").write_bytes(RED)
    b64 = base64.b64encode(BLUE).decode()
    recs = [{"id": "validation_Art_1", "question": "<image 1> or <image 2> or <image 3>?",
             "options": "['x', 'y']", "answer": "B", "question_type": "multiple-choice",
             "image_1": "pic.png", "image_2": b64, "image_3": {"bytes": b64, "path": None}}]
    src = tmp_path / "val.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    f, _ = import_benchmark("mmmu", str(src), tmp_path / "j")
    (a,) = items_of(f)
    r, b = url(f, RED), url(f, BLUE)
    assert a["messages"][0]["content"] == [I(r), T(" or "), I(b), T(" or "), I(b),
                                           T("?\nA. x\nB. y\n" + COT)]


def test_preset_imports_on_first_use_and_writes_requests(tmp_path: Path) -> None:
    """`prompts=mmmu prompts.source=<parquet folder> sampling.temperature=0.7` dry run:
    imported into the store's cache, and `dry_run_requests` holds the harness's request (parts
    in order, data: URLs of the original bytes, max_tokens 2048) with the command line's
    temperature over the protocol's 0: the job's own wiring (runner/job/recipe.py), key by key."""
    import base64
    import subprocess
    import sys

    from conftest import ROOT

    src = mmmu_parquet(tmp_path / "src")
    req = tmp_path / "req.jsonl"
    # the source: a folder holding each benchmark's source by name (one for a multirun)
    r = subprocess.run([sys.executable, "-m", "runner", "model=pixtral_tiny", "prompts=mmmu",
                        f"prompts.source={tmp_path / 'src'}", f"store.root={tmp_path / 'out'}",
                        "prompts.limit=1", "dry_run=true", f"dry_run_requests={req}",
                        "sampling.temperature=0.7"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (imported,) = (tmp_path / "out/.cache/benchmarks").glob("*/mmmu/imported.json")
    stamp = json.loads(imported.read_text())
    assert stamp["source"] == str(src.parent.parent)
    out = " ".join((r.stdout + r.stderr).split())
    assert "importing mmmu" in out and "1 requests written" in out
    assert ("sampling: the run's, under the set's or items' {'temperature': [0.0], "
            "'max_tokens': [2048]}, under the command line's {'temperature': 0.7}") in out, out
    assert (imported.parent / "set.yaml").is_file()
    (line,) = [json.loads(x) for x in req.read_text().splitlines()]
    assert line["custom_id"] == "validation_Art_Theory_1"
    body = line["body"]
    assert (body["temperature"], body["max_tokens"]) == (0.7, 2048)
    r_, b_ = (f"data:image/png;base64,{base64.b64encode(x).decode()}" for x in (RED, BLUE))
    assert body["messages"] == [{"role": "user", "content": [
        T("Compare "), I(r_), T(" and "), I(b_), T(". Which is larger?\nA. "), I(r_),
        T("\nB. the second "), I(b_), T("\nC. same\n" + COT)]}]


def test_the_command_line_wins_over_a_sets_sampling_key_by_key() -> None:
    from runner.plan.sampling import command_line, merge

    run = {"temperature": 0.7, "max_tokens": 16, "top_p": 1.0}
    assert command_line(["sampling.temperature=0.7", "model=x"], run) == {"temperature": 0.7}
    assert command_line(["sampling=sampled"], run) == run
    assert command_line(["+sampling.top_p=1.0"], run) == {"top_p": 1.0}
    protocol = {"temperature": 0.0, "max_tokens": 2048}
    assert merge(run, protocol, command_line(["sampling.temperature=0.7"], run)) == {
        "temperature": 0.7, "max_tokens": 2048, "top_p": 1.0}


@pytest.mark.process
def test_a_preset_runs_on_an_engine_not_only_dry(tmp_path: Path) -> None:
    """A preset's set is imported before the engine looks for the set's folder (its media
    root): a real run, on the fake engine, stores every item with the harness's sampling."""
    from conftest import FAKE, runner

    mmmu_parquet(tmp_path / "src")
    p = runner("model=pixtral_tiny", "engine=cpu", "prompts=mmmu",
               f"prompts.source={tmp_path / 'src'}", f"store.root={tmp_path / 'o'}",
               "model.limit_mm_per_prompt.image=7", env=FAKE)
    assert p.returncode == 0, p.stdout + p.stderr
    (res,) = (tmp_path / "o").glob("*/results.jsonl")
    recs = [json.loads(x) for x in res.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == ["validation_Art_Theory_1", "validation_Math_2"]
    assert all(r["sampling"]["max_tokens"] == 2048 and r["sampling"]["temperature"] == 0
               for r in recs), recs


# ---- VQAv2's sources: the hub's parquet conversion, a loading script, a seeded subset -------

VQA_FEATS = {"question_type": S, "multiple_choice_answer": S,
             "answers": [{"answer": S, "answer_confidence": S,
                          "answer_id": datasets.Value("int64")}],
             "image_id": datasets.Value("int64"), "answer_type": S,
             "question_id": datasets.Value("int64"), "question": S, "image": V}


def vqa_rows(ids: range) -> dict:
    """VQAv2 rows in the hub's schema (HuggingFaceM4/VQAv2's and lmms-lab/VQAv2's columns)."""
    return {"question_type": ["how many"] * len(ids), "multiple_choice_answer": ["2"] * len(ids),
            "answers": [[{"answer": "2", "answer_confidence": "yes", "answer_id": 1}]] * len(ids),
            "image_id": list(ids), "answer_type": ["number"] * len(ids),
            "question_id": list(ids), "question": [f"How many cats? {i}" for i in ids],
            "image": [img(BLUE)] * len(ids)}


def conversion(top: Path, split_dir: str = "validation") -> Path:
    """What `hf download REPO --repo-type dataset --revision refs/convert/parquet --local-dir
    top` leaves: <config>/<split>/NNNN.parquet shards (here two of validation, one of test) and
    huggingface_hub's .cache/ beside them."""
    parquet(top / "default" / split_dir / "0000.parquet", vqa_rows(range(1, 4)), VQA_FEATS)
    parquet(top / "default" / split_dir / "0001.parquet", vqa_rows(range(4, 6)), VQA_FEATS)
    parquet(top / "default" / "test" / "0000.parquet", vqa_rows(range(90, 92)), VQA_FEATS)
    meta = top / ".cache" / "huggingface" / "download" / "default" / split_dir
    meta.mkdir(parents=True)
    (meta / "0000.parquet.metadata").write_text("etag\n")
    return top


def test_the_hubs_parquet_conversion_loads_through_the_importer(tmp_path: Path) -> None:
    """A refs/convert/parquet download (shards named 0000.parquet under <config>/<split>/):
    the validation split's two shards, not test's, in order."""
    src = conversion(tmp_path / "VQAv2")
    f, n = import_benchmark("vqav2", str(src), tmp_path / "vq")
    assert n == 5 and [i["id"] for i in items_of(f)] == ["1", "2", "3", "4", "5"]
    stamp = json.loads((f.parent / "imported.json").read_text())
    assert (stamp["split_rows"], stamp["rows_planned"]) == (5, 5)


def test_a_partial_conversion_is_refused_in_one_sentence(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """partial-validation/ holds only the first ~5 GB of a big split: never taken for it."""
    src = conversion(tmp_path / "VQAv2", "partial-validation")
    capsys.readouterr()  # the fixture's own progress bars
    assert main(["import", "vqav2", "--source", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: source {src}: partial-validation/ is the hub's partial conversion "
                   "(the first ~5 GB of split 'validation', not the whole split); download the "
                   "whole split from a parquet repository of it instead (`hf download REPO "
                   "--repo-type dataset --include 'data/*' --local-dir DIR`).\n")
    assert not (tmp_path / "o").exists()


def test_a_loading_script_source_names_the_command_that_fixes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """HuggingFaceM4/VQAv2 as the hub holds it: a folder with its loading script VQAv2.py and
    no data. The lock's `datasets` refuses it (the same RuntimeError it raises for the hub
    id); the importer says, in one sentence, what to run instead."""
    src = tmp_path / "HuggingFaceM4" / "VQAv2"
    src.mkdir(parents=True)
    (src / "VQAv2.py").write_text("import datasets\n\nclass VQAv2(datasets.GeneratorBasedBuilder):"
                                  "\n    pass\n")
    assert main(["import", "vqav2", "--source", str(src), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: source {src} is a loading-script dataset (VQAv2.py), which datasets "
                   f"{datasets.__version__} no longer runs: use its parquet mirror "
                   "(prompts.source=lmms-lab/VQAv2) or fetch the hub's parquet conversion with "
                   "`hf download REPO --repo-type dataset --revision refs/convert/parquet "
                   "--local-dir DIR` and give DIR as the source.\n")


def test_vqav2s_default_source_is_the_parquet_mirror(tmp_path: Path) -> None:
    """Without --source, vqav2 reads lmms-lab/VQAv2 (parquet), not the harness's loading
    script; offline, the error names that id. In its own process: huggingface_hub reads
    HF_HUB_OFFLINE once, at import (set later in this one, the hub is asked and DNS waits)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # empty cache
    p = subprocess.run([sys.executable, "-m", "runner.benchmarks", "import", "vqav2", "--out",
                        str(tmp_path / "o")], cwd=ROOT, text=True, capture_output=True,
                       env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith(
        "error: --source lmms-lab/VQAv2: cannot load it"), p.stderr
    assert "OfflineModeIsEnabled" in p.stderr  # the hub was never asked


def test_harness_benchmarks_match_the_config_names() -> None:
    from runner.benchmarks.importers import PROTOCOL
    from runner.config import BENCHMARK_NAMES

    assert tuple(PROTOCOL) == BENCHMARK_NAMES


def test_a_seeded_subset_is_recorded_and_repeatable(tmp_path: Path) -> None:
    """--subset 4: four rows of ten chosen by the seed (the same four again, others under
    another seed, a larger subset keeping them), recorded in imported.json and the set's
    description, and planned as a subset of the split."""
    from runner.benchmarks.sources import seeded

    src = parquet(tmp_path / "data" / "validation-00000-of-00001.parquet",
                  vqa_rows(range(1, 11)), VQA_FEATS)

    def ids(out: str, *extra: str) -> list[str]:
        assert main(["import", "vqav2", "--source", str(src), "--out", str(tmp_path / out),
                     "--subset", "4", *extra]) == 0
        return [i["id"] for i in items_of(tmp_path / out / "set.yaml")]

    a, again, other = ids("a"), ids("b"), ids("c", "--subset-seed", "1")
    assert a == again and a != other and len(a) == len(set(a)) == 4
    assert [str(i + 1) for i in seeded(10, 4, 0)] == a  # in the source's order
    assert set(seeded(10, 4, 0)) <= set(seeded(10, 7, 0))
    stamp = json.loads((tmp_path / "a" / "imported.json").read_text())
    assert stamp["selection"] == {"rule": "seeded", "n": 4, "seed": 0}
    assert (stamp["split_rows"], stamp["rows_planned"]) == (10, 4)
    assert "a seeded subset of 4 of its 10 rows (seed 0)" in \
        yaml.safe_load((tmp_path / "a" / "set.yaml").read_text())["description"]


def test_the_subset_joins_the_import_key(tmp_path: Path) -> None:
    """prompts.subset.vqav2 (and its seed) key the import: the whole split, a subset and the
    same subset under another seed are three imports; limit and subset together are refused;
    a subset of another benchmark leaves vqav2's import as it was."""
    from conftest import make_cfg
    from runner.benchmarks.preset import resolve, selection

    parquet(tmp_path / "src" / "vqav2" / "data" / "validation-00000-of-00001.parquet",
            vqa_rows(range(10)), VQA_FEATS)
    base = ("prompts=vqav2", f"prompts.source={tmp_path / 'src'}", f"store.root={tmp_path / 's'}")

    def origin(*over: str) -> dict:
        return resolve(make_cfg(*base, *over))

    whole, sub, seed1 = (origin(), origin("prompts.subset.vqav2=4"),
                         origin("prompts.subset.vqav2=4", "prompts.subset_seed=1"))
    assert len({whole["key"], sub["key"], seed1["key"]}) == 3
    assert origin("prompts.subset.docvqa=4")["key"] == whole["key"]
    assert selection(whole) == "whole split (10)"
    assert selection(sub) == "seeded subset 4 of 10 (seed 0)"
    assert selection(origin("prompts.limit=3")) == "first 3 of 10"
    with pytest.raises(UserError, match=r"prompts.subset.vqav2=4 and prompts.limit=3 both set"):
        origin("prompts.subset.vqav2=4", "prompts.limit=3")


def test_a_folder_of_sources_takes_name_parquet_beside_name_folders(tmp_path: Path) -> None:
    """prompts.source=<folder>: vqav2.parquet is VQAv2's source, beside chartqa/ (a folder in
    the hub's layout) for another benchmark of the same multirun."""
    from conftest import make_cfg
    from runner.benchmarks.preset import resolve

    mirror = tmp_path / "mirror"
    parquet(mirror / "vqav2.parquet", vqa_rows(range(1, 4)), VQA_FEATS)
    parquet(mirror / "chartqa" / "data" / "test-00000-of-00001.parquet",
            {"type": ["human_test"], "question": ["How many?"], "answer": ["12"],
             "image": [img(RED)]}, {"type": S, "question": S, "answer": S, "image": V})
    got = {b: resolve(make_cfg(f"prompts={b}", f"prompts.source={mirror}",
                               f"store.root={tmp_path / 's'}"))
           for b in ("vqav2", "chartqa")}
    assert got["vqav2"]["source"] == str(mirror / "vqav2.parquet")
    assert got["vqav2"]["rows_planned"] == 3
    assert got["chartqa"]["source"] == str(mirror / "chartqa")
