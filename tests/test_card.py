"""`results card` on runs written into a fixture store (no engine). Every number is recomputed
here from what the fixture knows by construction (which outputs are right, each ANLS value
worked out by hand): Wilson from the roots of its quadratic, bootstrap intervals by plain
resampling, the delta and the recovery from the paired items, the published figure's
difference by subtraction."""

from __future__ import annotations

import json
import math
import random
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from fakes import record, write_run
from runner.errors import UserError
from runner.results.card.card import card, tables
from runner.results.cli.main import main
from runner.results.runs.load import load_run
from runner.results.scoring import stats
from runner.results.scoring.score import score_run

Z = 1.959963984540054
E, W = "explicit_prompt_relaxed_correctness", "anywhere_in_answer_relaxed_correctness"
SUBS = ("Art", "Math", "Physics")
# ANLS of each output against the references ["paris", "Paris"], by hand: 1 - edits / length
ANLS = {"Paris": 1.0, "pari": 0.8, "xxxxx": 0.0, "parisx": 1 - 1 / 6}


def wilson_roots(x: int, n: int) -> list[float]:
    ph = x / n
    a, b, c = 1 + Z * Z / n, -(2 * ph + Z * Z / n), ph * ph
    r = math.sqrt(b * b - 4 * a * c)
    return [100 * (-b - r) / (2 * a), 100 * (-b + r) / (2 * a)]


def plain(stat, *cols: list[float], seed: int = 1) -> list[float]:
    """A plain percentile bootstrap of stat(resampled columns), 10,000 resamples."""
    rnd, n = random.Random(seed), len(cols[0])
    vals = []
    for _ in range(10_000):
        idx = [rnd.randrange(n) for _ in range(n)]
        try:
            vals.append(stat(*([c[i] for i in idx] for c in cols)))
        except ZeroDivisionError:
            continue
    vals.sort()
    return [100 * vals[int(0.025 * len(vals))], 100 * vals[int(0.975 * len(vals)) - 1]]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def mmmu_run(root: Path, name: str, model: dict, right: list[bool]) -> tuple[Path, dict]:
    """60 MMMU-style items (scored with both relaxed metrics), a wrong one an error record,
    plus one item of this run only and one without a reference. Returns the truth by id."""
    recs, truth = [], {}
    for i, ok in enumerate(right):
        iid = f"q{i:02d}"
        out = "Reasoning.\nFinal Answer: B" if ok else "Reasoning.\nFinal Answer: C"
        recs.append(record(iid, out, expected="B", scorer=[E, W],
                           metadata={"subfield": SUBS[i % 3]}))
        truth[iid] = float(ok)
    wrong = next(i for i, ok in enumerate(right) if not ok)
    recs[wrong] = record(f"q{wrong:02d}", error="image unreadable", expected="B", scorer=[E, W],
                         metadata={"subfield": SUBS[wrong % 3]})
    recs.append(record(f"only-{name[:2]}", "Final Answer: B", expected="B", scorer=[E, W]))
    truth[f"only-{name[:2]}"] = 1.0
    recs.append(record("free", "whatever"))  # no reference: not scored
    d = write_run(root, name, recs, config={"prompts": {"name": "mmmu"}, "model": model},
                  model=model["name"])
    score_run(d)
    return d, truth


@pytest.fixture
def store(tmp_path):
    rnd = random.Random(7)
    base_right = [rnd.random() < 0.5 for _ in range(60)]
    other_right = [b if rnd.random() < 0.7 else not b for b in base_right]
    a, ta = mmmu_run(tmp_path, "a" * 16, {"name": "pixtral-12b-2409",
                                          "hf_repo": "mistralai/Pixtral-12B-2409"}, base_right)
    b, tb = mmmu_run(tmp_path, "b" * 16, {"name": "pixtral-large-instruct-2411-w4a16",
                                          "quantization": "compressed-tensors",
                                          "quantized_from":
                                          "mistralai/Pixtral-Large-Instruct-2411"}, other_right)
    outs = [rnd.choice(list(ANLS)) for _ in range(50)]
    recs = [record(f"d{i}", o, expected=["paris", "Paris"], scorer="anls")
            for i, o in enumerate(outs)]
    c = write_run(tmp_path, "c" * 16, recs, config={"prompts": {"name": "DocVQA"},
                                                    "model": {"name": "pixtral-12b-2409"}},
                  model="pixtral-12b-2409")
    score_run(c)
    return tmp_path, (a, ta), (b, tb), (c, [ANLS[o] for o in outs])


def test_rows_recomputed(store):
    root, (a, ta), (b, tb), (c, anls) = store
    got = card([load_run(d) for d in (a, b, c)])
    ra, rb, rc = got["rows"]
    assert list(ra) == ["benchmark", "run", "ref", "model", "metric", "value", "ci95",
                        "interval", "n", "errors", "other_metrics", "view", "subset",
                        "published", "vs_published"]
    x, n = sum(ta.values()), len(ta)
    assert (ra["benchmark"], ra["metric"], ra["n"], ra["errors"]) == ("mmmu", E, 61, 1) == \
        ("mmmu", E, n, 1)
    assert ra["value"] == round(100 * x / n, 2)
    assert ra["ci95"] == pytest.approx(wilson_roots(int(x), n), abs=0.006)
    assert ra["interval"] == "wilson"
    # the error scores 0 under both metrics; a wrong "Final Answer: C" is wrong for both
    assert ra["other_metrics"] == {W: round(100 * x / n, 2)}
    assert ra["published"]["value"] == 52.5 and "2024-09-17" in ra["published"]["source"]
    assert ra["vs_published"] == round(ra["value"] - 52.5, 2)
    # Pixtral Large: no MMMU figure could be sourced, so none is shown
    assert (rb["published"], rb["vs_published"]) == (None, None)
    assert (rc["benchmark"], rc["metric"], rc["interval"], rc["n"]) == ("docvqa", "anls",
                                                                        "bootstrap", 50)
    assert rc["value"] == round(100 * mean(anls), 2)
    assert rc["ci95"] == pytest.approx(plain(mean, anls), abs=1.5)
    assert rc["published"]["value"] == 90.7
    assert rc["vs_published"] == round(rc["value"] - 90.7, 2)


def test_recovery_only_for_a_quantized_model_against_its_base(store):
    """Pixtral-12B against Pixtral-Large W4A16 is a delta, not a recovery: the W4A16 model
    names its base (model.quantized_from), and 12B is not it."""
    root, (a, _), (b, _), _ = store
    (p,) = card([load_run(a), load_run(b)])["pairs"]
    assert p["delta"] is not None and (p["recovery"], p["recovery_ci95"]) == (None, None)
    text = " ".join(str(t.columns[-1]._cells) for t in tables(card([load_run(a), load_run(b)]))
                    [1:2])
    assert "not a quantization of the base" in text


def test_a_base_that_scores_nothing_has_no_recovery_and_says_so():
    """The tiny twins' pair (random weights) scores 0 on both sides: a quantization of its
    base, but no ratio; the card says why instead of calling it no quantization."""
    from runner.results.card.card import paired

    zero, one = {"a": 0.0, "b": 0.0}, {"a": 1.0, "b": 0.0}
    p = paired(zero, one, recovery=True)
    assert p["recovery"] is None and p["recovery_why"] == "the base scores 0"
    assert "recovery_why" not in paired(zero, one, recovery=False)
    assert paired(one, one, recovery=True)["recovery"] == 100.0


def as_base(d: Path) -> None:
    """Make run `d` a run of the unquantized Pixtral-Large (the W4A16 model's base)."""
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["model"] = {"name": "pixtral-large-instruct-2411",
                    "hf_repo": "mistralai/Pixtral-Large-Instruct-2411"}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_pair_delta_and_recovery_recomputed(store):
    root, (a, ta), (b, tb), _ = store
    as_base(a)
    (p,) = card([load_run(a), load_run(b)])["pairs"]
    ids = [i for i in ta if i in tb]
    xa, xb = [ta[i] for i in ids], [tb[i] for i in ids]
    assert (p["base"], p["other"], p["n_paired"]) == (a.name, b.name, 60) == \
        (a.name, b.name, len(ids))
    assert p["delta"] == round(100 * (mean(xb) - mean(xa)), 2)
    diffs = [y - x for x, y in zip(xa, xb, strict=True)]
    assert p["ci95"] == pytest.approx(plain(mean, diffs), abs=3.0)
    assert p["recovery"] == round(100 * mean(xb) / mean(xa), 2)
    assert p["recovery_ci95"] == pytest.approx(
        plain(lambda u, v: sum(v) / sum(u), xa, xb), rel=0.05)
    assert p["ci95"][0] < p["delta"] < p["ci95"][1]
    assert p["recovery_ci95"][0] < p["recovery"] < p["recovery_ci95"][1]


def test_by_subfield_recomputed(store):
    root, (a, ta), (b, tb), _ = store
    got = card([load_run(a), load_run(b)], by="subfield")["by"]
    assert got["field"] == "subfield"
    for row in got["rows"]:
        truth = ta if row["run"] == a.name else tb
        ids = [i for i in truth if i.startswith("q") and SUBS[int(i[1:]) % 3] == row["group"]]
        if row["group"] == "(none)":
            ids = [i for i in truth if i.startswith("only")]
        xs = [truth[i] for i in ids]
        assert (row["n"], row["value"]) == (len(xs), round(100 * mean(xs), 2)), row
    assert {r["group"] for r in got["rows"]} == {*SUBS, "(none)"}
    assert {p["group"] for p in got["pairs"]} == set(SUBS)  # "(none)": no item in both
    for p in got["pairs"]:
        ids = [i for i in ta if i in tb and i.startswith("q")
               and SUBS[int(i[1:]) % 3] == p["group"]]
        assert p["n_paired"] == len(ids) == 20
        assert p["delta"] == round(100 * (mean([tb[i] for i in ids])
                                          - mean([ta[i] for i in ids])), 2)


def test_cli_text_and_json(store, capsys, monkeypatch):
    from rich.console import Console

    from runner.results.cli import evaluate

    monkeypatch.setattr(evaluate, "out", Console(width=200, highlight=False))  # no wrapping
    root, (a, _), (b, _), (c, _) = store
    assert main(["--root", str(root), "card", a.name[:4], b.name[:4], c.name[:4], "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert list(got) == ["rows", "pairs", "table"] and len(got["rows"]) == 3
    assert len(got["pairs"]) == 1
    assert main(["--root", str(root), "card", a.name[:4], b.name[:4], "--by", "subfield"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for want in ("report card", "explicit relaxed", "also: mmmu", "Pixtral-12B-2409: Mistral AI",
                 "recovery %", "by subfield", "Physics", "Announcing Pixtral 12B"):
        assert want in text
    assert main(["--root", str(root), "card"]) == 2


def judged_store(tmp_path: Path) -> Path:
    """A judged MM-MT-Bench run rated by two judges: a local one (ratings 2, 3, 4) and the
    published one (gpt-4o-2024-05-13: 5, 6, 7), as `results judge` stores them."""
    from runner.results.judging.judged import request_hash

    recs = [record(f"t{i}", "an answer", expected="a reference") for i in range(3)]
    d = write_run(tmp_path, "j" * 16, recs, config={"prompts": {"name": "mm_mt_bench"},
                                                    "model": {"name": "pixtral-12b-2409"}},
                  model="pixtral-12b-2409")
    (d / "judgements").mkdir()
    for jid, name, model, base in (("aaa111", "local", "some-local-model", 2),
                                   ("bbb222", "mm_mt_bench", "gpt-4o-2024-05-13", 5)):
        (d / "judgements" / f"{jid}.json").write_text(json.dumps(
            {"id": jid, "name": name, "model": model}))
        (d / "judgements" / f"{jid}.jsonl").write_text("".join(json.dumps(
            {"id": r["id"], "key": r["key"], "request": request_hash(jid, r), "judge": jid,
             "status": "rated", "rating": float(base + i)}) + "\n" for i, r in enumerate(recs)))
    return d


def test_a_judged_run_shows_its_micro_average(tmp_path):
    d = judged_store(tmp_path)
    (row,) = card([load_run(d)])["rows"]
    # the benchmark's configured judge (mm_mt_bench), whichever metrics file is newest
    assert (row["benchmark"], row["value"], row["n"]) == ("mm_mt_bench", 6.0, 3)
    assert row["judge"] == {"id": "bbb222", "name": "mm_mt_bench",
                            "model": "gpt-4o-2024-05-13", "published": True}
    assert row["ci95"][0] <= 6.0 <= row["ci95"][1]
    assert row["published"]["value"] == 6.05 and row["vs_published"] == -0.05
    assert "note" not in row["published"]
    # another judge, named: its ratings, and the row says it is not the published judge
    (other,) = card([load_run(d)], judge="local")["rows"]
    assert (other["value"], other["judge"]["id"]) == (3.0, "aaa111")
    assert "not gpt-4o-2024-05-13: not comparable to 6.05" in other["published"]["note"]
    # the row names the judge's model and whether it is the published one
    assert "by gpt-4o-2024-05-13 (the published judge)" in row["metric"]
    assert "by some-local-model (not the published gpt-4o-2024-05-13)" in other["metric"]
    with pytest.raises(UserError, match="rated by local"):
        card([load_run(d)], judge="nobody")


def test_an_unjudged_mm_mt_bench_run_says_so_and_the_command_that_judges_it(tmp_path):
    """No judge rated it: no value beside the published 6.05 (not the `exact` scorer's), no
    pair, and the command that asks the published judge, naming the run by HASH@VIEW."""
    d = judged_store(tmp_path)
    other = judged_store(tmp_path / "two")
    for x in (d, other):
        for f in (x / "judgements").iterdir():
            f.unlink()
    runs = [load_run(d), load_run(other)]
    result = card(runs)
    row = result["rows"][0]
    assert (row["metric"], row["value"], row["n"], row["vs_published"]) == (
        "not judged", None, 0, None)
    assert row["judge_command"] == (
        f"python -m runner.results --root {tmp_path} judge {runs[0].ref} judge=mm_mt_bench "
        "judge.url=https://api.openai.com/v1 judge.model=gpt-4o-2024-05-13 "
        "judge.api_key_env=OPENAI_API_KEY")
    assert result["pairs"] == []
    text = " ".join(" ".join(str(t.caption) for t in tables(result)).split())
    assert f"mm_mt_bench {d.name[:8]}: not judged; to judge it: {row['judge_command']}" in text


def test_judged_pairs_are_on_the_judges_ratings(tmp_path):
    """Two judged runs pair on the judge's ratings (the judge's scale), never on `exact`."""
    d1 = judged_store(tmp_path / "one")
    d2 = judged_store(tmp_path / "two")
    cfg = yaml.safe_load((d2 / "config.yaml").read_text())
    cfg["model"] = {"name": "pixtral-large-instruct-2411"}
    (d2 / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = d2 / "judgements" / "bbb222.jsonl"
    rows = [json.loads(x) for x in lines.read_text().splitlines()]
    lines.write_text("".join(json.dumps(r | {"rating": r["rating"] + 1}) + "\n" for r in rows))
    (p,) = card([load_run(d1), load_run(d2)])["pairs"]
    assert (p["n_paired"], p["delta"], p["recovery"]) == (3, 1.0, None)


def test_ratio_bootstrap_agrees_with_plain_resampling():
    rnd = random.Random(5)
    a = [float(rnd.random() < 0.6) for _ in range(120)]
    b = [x if rnd.random() < 0.8 else 1 - x for x in a]
    lo, hi = stats.paired_ratio_bootstrap(a, b)
    plo, phi = plain(lambda u, v: sum(v) / sum(u), a, b)
    assert (100 * lo, 100 * hi) == pytest.approx((plo, phi), abs=2.5)
    assert stats.paired_ratio_bootstrap([0.0, 0.0], [1.0, 0.0]) is None


def test_a_sweep_over_benchmarks_prints_the_card_and_others_do_not(store):
    from rich.console import Console

    from runner.launch.sweep import benchmark_card

    root, (a, _), (b, _), (c, _) = store
    other = write_run(root, "s" * 16, [record("x", "y", expected="y")],
                      config={"prompts": {"name": "sample"}})
    rows = [{"folder": str(d)} for d in (a, b, c, other)] + [{"folder": None}]
    con = Console(width=200, record=True)
    for t in benchmark_card(rows):
        con.print(t)
    text = con.export_text()
    assert "report card" in text and "docvqa" in text and "recovery %" in text
    assert "ssssssss" not in text  # the sample set is no benchmark
    assert benchmark_card([{"folder": str(other)}]) == []


# --- the comparison table: a column per model, a row per benchmark --------------------------


def qwen_run(root: Path, right: list[bool]) -> tuple[Path, dict]:
    return mmmu_run(root, "q" * 16, {"name": "qwen2-vl-7b-instruct",
                                     "hf_repo": "Qwen/Qwen2-VL-7B-Instruct"}, right)


def test_the_comparison_table_recomputed(store):
    root, (a, ta), (b, tb), (c, anls) = store
    rnd = random.Random(11)
    q, tq = qwen_run(root, [rnd.random() < 0.4 for _ in range(60)])
    got = card([load_run(d) for d in (a, b, c, q)])
    t = got["table"]
    pix, large, qwen = "pixtral-12b-2409", "pixtral-large-instruct-2411-w4a16", \
        "qwen2-vl-7b-instruct"
    assert t["models"] == [pix, large, qwen] and t["ref"] == pix
    assert t["benchmarks"] == ["mmmu", "docvqa"]
    assert set(t["cells"]["docvqa"]) == {pix}  # the others did not run it
    mm = t["cells"]["mmmu"]
    # each cell is its run's row: value, interval, published figure
    assert mm[pix]["value"] == round(100 * mean(list(ta.values())), 2)
    assert mm[qwen]["value"] == round(100 * mean(list(tq.values())), 2)
    assert mm[qwen]["ci95"] == pytest.approx(wilson_roots(int(sum(tq.values())), len(tq)),
                                             abs=0.006)
    assert mm[qwen]["published"]["value"] == 47.6
    assert "Pixtral-12B-2409 model card" in mm[qwen]["published"]["source"]
    assert mm[qwen]["vs_published"] == round(mm[qwen]["value"] - 47.6, 2)
    assert mm[large]["published"] is None  # no sourced figure: none shown
    # the reference column has no delta; the others are paired on the items both scored
    assert "vs_ref" not in mm[pix]
    for other, truth in ((qwen, tq), (large, tb)):
        ids = [i for i in ta if i in truth]
        d = mm[other]["vs_ref"]
        assert d["n_paired"] == len(ids) == 60
        assert d["delta"] == round(100 * (mean([truth[i] for i in ids])
                                          - mean([ta[i] for i in ids])), 2)
        assert d["recovery"] is None  # neither quantizes Pixtral-12B
    # --ref: another reference column flips the deltas
    t2 = card([load_run(d) for d in (a, b, c, q)], ref=qwen)["table"]
    assert t2["ref"] == qwen and "vs_ref" not in t2["cells"]["mmmu"][qwen]
    assert t2["cells"]["mmmu"][pix]["vs_ref"]["delta"] == pytest.approx(
        -mm[qwen]["vs_ref"]["delta"], abs=0.011)
    assert card([load_run(d) for d in (a, q)], ref=q.name[:6])["table"]["ref"] == qwen
    with pytest.raises(UserError, match="--ref nope names no column"):
        card([load_run(d) for d in (a, q)], ref="nope")


def test_the_comparison_table_on_the_command_line(store, capsys, monkeypatch):
    from rich.console import Console

    from runner.results.cli import evaluate

    monkeypatch.setattr(evaluate, "out", Console(width=250, highlight=False))
    root, (a, _), _, (c, _) = store
    q, _ = qwen_run(root, [i % 3 == 0 for i in range(60)])
    args = ["--root", str(root), "card", a.name[:4], c.name[:4], q.name[:4]]
    assert main([*args, "--ref", "qwen2-vl-7b-instruct", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["table"]["ref"] == "qwen2-vl-7b-instruct" and len(got["rows"]) == 3
    assert main(args) == 0
    text = " ".join(capsys.readouterr().out.split())
    for want in ("comparison (95 % intervals; Δ: paired against pixtral-12b-2409)",
                 "qwen2-vl-7b-instruct", "pub. 47.6", "pub. 52.5", "not run", "60 paired",
                 "huggingface.co/Wark1/Pixtral-12B-2409"):
        assert want in text, want
    assert main([*args, "--ref", "nope"]) == 2
    # one model: no comparison table
    assert main(["--root", str(root), "card", a.name[:4], c.name[:4]]) == 0
    assert "comparison" not in capsys.readouterr().out


class _Section(HTMLParser):
    """The report's comparison section as text: its header cells, its rows' cells (each cell
    its lines), its notes."""

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.cell, self.rows, self.notes = 0, None, [], []
        self.where: list[str] = []

    def handle_starttag(self, tag, attrs):
        if ("id", "comparison") in attrs:
            self.depth = 1
        elif self.depth:
            self.depth += 1
            if tag == "tr":
                self.rows.append([])
            elif tag in ("th", "td"):
                self.cell = []
                self.rows[-1].append(self.cell)
            elif tag == "div" and ("class", "notes") in attrs:
                self.cell = self.notes

    def handle_endtag(self, tag):
        if self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth and self.cell is not None and data.strip():
            self.cell.append(data)


def comparison_section(page: Path) -> _Section | None:
    text = page.read_text()
    if 'id="comparison"' not in text:
        return None
    s = _Section()
    s.feed(text)
    return s


def test_the_report_shows_the_comparison_card_for_runs_of_several_models(store, tmp_path):
    """The HTML report over runs of two models has the card's comparison table as a section
    (the card's own numbers: `card(...)["table"]`); over runs of one model it has none."""
    from runner.results.report.html import build_report

    root, (a, _), _, (c, _) = store
    q, _ = qwen_run(root, [i % 3 == 0 for i in range(60)])
    t = card([load_run(d) for d in (a, c, q)])["table"]
    page = build_report([a, c, q], tmp_path / "two.html")
    s = comparison_section(page)
    assert s is not None
    head, *rows = s.rows
    pix, qwen = "pixtral-12b-2409", "qwen2-vl-7b-instruct"
    assert ["".join(x) for x in head] == ["benchmark", f"{pix} (ref)", qwen]
    cells = {r[0][0]: r[1:] for r in rows}
    assert list(cells) == ["mmmu", "docvqa"]
    mp, mq = t["cells"]["mmmu"][pix], t["cells"]["mmmu"][qwen]
    assert cells["mmmu"][0] == [f"{mp['value']:.2f} [{mp['ci95'][0]:.2f}, {mp['ci95'][1]:.2f}]"
                                f" n={mp['n']}", "pub. 52.5"]
    d = mq["vs_ref"]
    assert cells["mmmu"][1] == [
        f"{mq['value']:.2f} [{mq['ci95'][0]:.2f}, {mq['ci95'][1]:.2f}] n={mq['n']}",
        "pub. 47.6", f"Δ {d['delta']:.2f} [{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}] (60 paired)"]
    assert cells["docvqa"][1] == ["not run"]
    assert any("huggingface.co/Wark1/Pixtral-12B-2409" in n for n in s.notes)
    # one model (two benchmarks): no comparison section
    assert comparison_section(build_report([a, c], tmp_path / "one.html")) is None
