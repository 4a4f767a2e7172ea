"""`+experiment=pixtral_table`: the six benchmarks in one multirun, planned (dry run) on sample
rows of each (JSONL sources, in one folder named by benchmark, the harness's columns): MMMU's
7-image item is planned without an error, and the dry run's table says what each needs; two of
its points on the fake engine, MM-MT-Bench judged by a stand-in judge or said not judged."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import FAKE, ROOT, runner

pytestmark = pytest.mark.process  # six presets imported and planned in one process

BENCHES = ["mmmu", "mathvista", "chartqa", "docvqa", "vqav2", "mm_mt_bench"]


def sources(d: Path) -> Path:
    """One or two rows of each benchmark; MMMU's second row has 7 images of 1024x1024."""
    d.mkdir(parents=True)
    for k in range(1, 8):
        Image.new("RGB", (1024, 1024), (30 * k, 200 - 20 * k, 90)).save(d / f"p{k}.png")
    Image.new("RGB", (640, 480), (200, 30, 30)).save(d / "small.png")
    seven = {f"image_{k}": f"p{k}.png" for k in range(1, 8)}
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q1"}]},
            {"role": "assistant", "content": "R1"}]
    rows = {
        "mmmu": [{"id": "validation_Art_1", "question": "Which? <image 1>", "options": "['x', 'y']",
                  "answer": "A", "question_type": "multiple-choice", "image_1": "small.png"},
                 {"id": "validation_Art_2", "question": "Which of the seven? "
                  + " ".join(f"<image {k}>" for k in range(1, 8)),
                  "options": "['x', 'y']", "answer": "B", "question_type": "multiple-choice",
                  **seven}],
        "mathvista": [{"pid": "1", "question": "q", "query": "What is x?",
                       "decoded_image": "small.png", "choices": None, "unit": None,
                       "precision": None, "answer": "4", "question_type": "free_form",
                       "answer_type": "integer", "metadata": {"task": "t"}}],
        "chartqa": [{"type": "human_test", "question": "How many?", "answer": "12",
                     "image": "small.png"}],
        "docvqa": [{"questionId": "1", "question": "What is the date?", "image": "p1.png",
                    "answers": ["1/8/93"]}],
        "vqav2": [{"question_id": q, "question": "How many cats?", "image": "small.png",
                   "answers": [{"answer": "2"}], "answer_type": "number",
                   "multiple_choice_answer": "2"} for q in (1, 2)],
        "mm_mt_bench": [{"category": "charts", "conversation": json.dumps(conv),
                         "image": "small.png"}]}
    for b in BENCHES:
        (d / f"{b}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[b]))
    return d


def test_the_table_s_dry_run_plans_mmmu_s_seven_images(tmp_path: Path):
    src = sources(tmp_path / "src")
    # VQAv2 as a seeded subset (1 of its 2 rows): the dry run says so, the others whole splits
    p = runner("-m", "+experiment=pixtral_table", "model=pixtral_12b", f"prompts.source={src}",
               f"store.root={tmp_path / 'out'}", "dry_run=true", "prompts.subset.vqav2=1",
               timeout=600)
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 0, out[-4000:]
    assert "6 points, 1 engine start at most" in out
    runs = json.loads(max((tmp_path / "out").glob(".sweeps/*/runs.json")).read_text())
    plans = {next(o for o in r["overrides"] if o.startswith("prompts="))[8:]: r["plan"]
             for r in runs}
    assert sorted(plans) == sorted(BENCHES)
    mmmu = plans["mmmu"]
    assert mmmu["items"] == 2 and mmmu["max_images"] == 7 and mmmu["errors"] == 0
    # 7 images at 1024 px: over the 16,384 of the model's own config, within the table's 32,768
    assert 16_384 < mmmu["needs_len"] <= mmmu["max_model_len"] == 32_768
    assert all(pl["errors"] == 0 for pl in plans.values()), plans
    assert plans["mm_mt_bench"]["items"] == 1 and plans["vqav2"]["items"] == 1
    assert plans["vqav2"]["selection"] == "seeded subset 1 of 2 (seed 0)"
    assert plans["mmmu"]["selection"] == "whole split (2)"
    assert "seeded subset 1 of 2 (seed 0)" in out and "whole split (2)" in out
    assert "dry run · what each point needs" in out and "derived time" in out
    assert "engine starts: none (a dry run); the sweep needs 1" in out


def test_without_the_table_s_limits_mmmu_s_item_is_an_error(tmp_path: Path):
    """The same rows under the model's own config (4 images per prompt): the error the table's
    config avoids, as the dry run shows it."""
    src = sources(tmp_path / "src")
    p = runner("-m", "prompts=mmmu", "model=pixtral_12b", f"prompts.source={src}",
               f"store.root={tmp_path / 'out'}", "dry_run=true", timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = json.loads(max((tmp_path / "out").glob(".sweeps/*/runs.json")).read_text())
    assert run["plan"]["errors"] == 1 and run["plan"]["max_images"] == 7


def test_the_table_over_models_plans_one_engine_per_model(tmp_path: Path):
    """`model=pixtral_12b,llava_onevision_tiny,gpt_4o` over the table: 18 points, one engine
    start per open model, none for the hosted one; LLaVA-OneVision's processor (the tiny
    twin's, counted exactly) makes MMMU's 7 images of 1024 px longer than the 32,768 tokens
    the model takes, and the dry run names that point."""
    from conftest import ROOT
    from runner.bundled import build

    build("tiny_llava_ov", ROOT / "data" / "llava-onevision-tiny")  # as a run builds it
    src = sources(tmp_path / "src")
    models = ["pixtral_12b", "llava_onevision_tiny", "gpt_4o"]
    p = runner("-m", "+experiment=pixtral_table", f"model={','.join(models)}",
               f"prompts.source={src}", f"store.root={tmp_path / 'out'}", "dry_run=true",
               env={"COLUMNS": "200"})
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 0, out[-4000:]
    assert "18 points, 2 engine starts at most" in out
    assert "1 group asking a server or an API, no engine" in out
    assert "engine starts: none (a dry run); the sweep needs 2 (3 groups" in out
    runs = json.loads(max((tmp_path / "out").glob(".sweeps/*/runs.json")).read_text())
    by_model: dict[str, list[dict]] = {}
    for r in runs:
        by_model.setdefault(next(o[6:] for o in r["overrides"] if o.startswith("model=")),
                            []).append(r)
    assert sorted(by_model) == sorted(models) and all(len(v) == 6 for v in by_model.values())
    engines = {m: {r["engine"] for r in rs} for m, rs in by_model.items()}
    assert all(len(e) == 1 for e in engines.values())  # one engine group per model
    assert len(set.union(*engines.values())) == 3
    assert [m for m, rs in by_model.items() if all(r["served"] for r in rs)] == ["gpt_4o"]
    # the table's starts column: one per open model, on its first point
    starts = re.findall(r"prompts=(\w+) model=(\w+) [a-z ]+\([\d,]+\) [\d,]+ \d+ [\d,]+ [\d,]+ "
                        r"\d+ (\d) ", out)  # after the rows column: "whole split (2)"
    assert len(starts) == 18
    assert sorted((m, b) for b, m, s in starts if s == "1") == [
        ("llava_onevision_tiny", "mmmu"), ("pixtral_12b", "mmmu")]
    mmmu = {m: next(r["plan"] for r in rs if "prompts=mmmu" in r["overrides"])
            for m, rs in by_model.items()}
    assert mmmu["llava_onevision_tiny"]["errors"] == 1  # exact: 7 x ~7.4k image tokens
    assert mmmu["llava_onevision_tiny"]["model_len"] == 32_768  # its config.json
    assert mmmu["pixtral_12b"]["errors"] == mmmu["gpt_4o"]["errors"] == 0
    assert "prompts=mmmu model=llava_onevision_tiny cannot take it as asked: 1 item" in out
    assert out.count("cannot take it as asked") == 1
    assert "over model.max_model_len=32768" in out  # the item's own error, in its plan


def test_a_max_model_len_over_the_model_s_own_is_named(tmp_path: Path):
    from conftest import ROOT
    from runner.bundled import build

    build("tiny_llava_ov", ROOT / "data" / "llava-onevision-tiny")
    src = sources(tmp_path / "src")
    p = runner("-m", "prompts=vqav2", "model=llava_onevision_tiny", "model.max_model_len=65536",
               f"prompts.source={src}", f"store.root={tmp_path / 'out'}", "dry_run=true",
               env={"COLUMNS": "200"})
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 0, out[-4000:]
    assert "model.max_model_len=65,536 is over the 32,768 tokens 'llava-onevision-tiny' " \
        "takes" in out
    assert "max_model_len 65,536 is over the 32,768 the model takes" in out


def test_mm_mt_bench_is_judged_after_generation_when_a_judge_is_configured(tmp_path: Path,
                                                                        standins):
    """Two of the table's points on the fake engine. No judge: MM-MT-Bench's card row says
    "not judged" with the command that judges it; that command, aimed at a stand-in playing
    the published judge, judges it and the card names that judge. With `judge=...` on the
    table's command (a stand-in that is not the published judge), MM-MT-Bench's run is judged
    right after its generation, ChartQA's is not, and the row says whose judgement it is."""
    src = sources(tmp_path / "src")
    store, trace = tmp_path / "out", tmp_path / "trace"
    table = ["-m", "+experiment=pixtral_table", "model=pixtral_tiny", "engine=cpu",
             "prompts=mm_mt_bench,chartqa", f"prompts.source={src}", f"store.root={store}"]
    env = FAKE | {"COLUMNS": "400"}  # a line per caption note
    p = runner(*table, "sampling.max_tokens=8", env=env)
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 0, out[-3000:]
    mm, chart = points(store)
    cmd = (f"python -m runner.results --root {store} judge {mm['hash']}@{mm['view']} "
           "judge=mm_mt_bench judge.url=https://api.openai.com/v1 "
           "judge.model=gpt-4o-2024-05-13 judge.api_key_env=OPENAI_API_KEY")
    assert f"mm_mt_bench {mm['hash'][:8]}: not judged; to judge it: {cmd}" in out
    assert not list(store.glob("*/judgements"))

    published, _ = standins({"name": "gpt-4o-2024-05-13", "judge": True, "key": "k-XQZ"})
    argv = shlex.split(cmd.replace("https://api.openai.com/v1", published))
    r = subprocess.run([sys.executable, *argv[1:]], text=True, capture_output=True, cwd=ROOT,
                       env={**os.environ, "OPENAI_API_KEY": "k-XQZ", "COLUMNS": "400"})
    assert r.returncode == 0 and "of 1 rated" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "runner.results", "--root", str(store), "card",
                        f"{mm['hash']}@{mm['view']}"], text=True, capture_output=True,
                       cwd=ROOT, env={**os.environ, "COLUMNS": "400"})
    assert "judge mm_mt_bench by gpt-4o-2024-05-13 (the published judge)" in r.stdout, r.stdout

    local, _ = standins({"name": "local-judge", "judge": True, "trace": str(trace)})
    p = runner(*table, "sampling.max_tokens=9", "judge=mm_mt_bench", f"judge.url={local}",
               env=env)
    out = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 0, out[-3000:]
    mm, chart = points(store)
    assert mm["status"] == chart["status"] == "computed"
    assert "judge mm_mt_bench by local-judge (not the published gpt-4o-2024-05-13)" in out
    assert trace.read_text().count("post") == 1  # MM-MT-Bench's one item, nothing of ChartQA's
    assert (store / mm["hash"] / "judgements").is_dir()
    assert not (store / chart["hash"] / "judgements").exists()


def points(store: Path) -> tuple[dict, dict]:
    """The latest sweep's rows of mm_mt_bench and chartqa."""
    rows = json.loads(max(store.glob(".sweeps/*/runs.json")).read_text())
    by = {next(o for o in r["overrides"] if o.startswith("prompts="))[8:]: r for r in rows}
    return by["mm_mt_bench"], by["chartqa"]
