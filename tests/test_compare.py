"""`results compare`, the sweep table's marks, `ls`'s half-width and sampling.n > 1 metrics,
on fake runs (no engine). Every number is checked against a separate computation: McNemar
against an exact math.comb sum, Wilson against the roots of its quadratic, pass@k against
brute-force enumeration, the bootstrap against plain resampling."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from rich.console import Console

from conftest import ROOT
from fakes import record, write_run
from runner.launch.sweep import table
from runner.results.card.compare import compare_runs, item_samples, load_scored
from runner.results.cli.main import main
from runner.results.scoring import stats
from runner.results.scoring.score import score_run

Z = 1.959963984540054


# ---- independent computations ------------------------------------------------------------


def wilson_roots(x: int, n: int) -> tuple[float, float]:
    """The Wilson interval as the two p with (x/n - p)^2 = z^2 p (1 - p) / n."""
    ph = x / n
    a, b, c = 1 + Z * Z / n, -(2 * ph + Z * Z / n), ph * ph
    r = math.sqrt(b * b - 4 * a * c)
    return ((-b - r) / (2 * a), (-b + r) / (2 * a))


def binom_two_sided(b: int, c: int) -> float:
    """Two-sided exact binomial test at 1/2, as scipy.stats.binomtest defines it: the
    probability of every outcome no likelier than the one observed."""
    n = b + c
    pk = [Fraction(math.comb(n, k), 2**n) for k in range(n + 1)]
    return float(min(Fraction(1), sum(p for p in pk if p <= pk[b])))


def pass_brute(flags: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(flags, k))
    return sum(any(s) for s in subsets) / len(subsets)


def bootstrap_plain(d: list[float], seed: int = 1) -> tuple[float, float]:
    rnd = random.Random(seed)
    means = sorted(sum(rnd.choices(d, k=len(d))) / len(d) for _ in range(10_000))
    return means[249], means[9750]


# ---- the statistics ------------------------------------------------------------------------


@pytest.mark.parametrize("x,n", [(0, 10), (1, 10), (5, 10), (10, 10), (31, 120), (620, 1000)])
def test_wilson_is_the_closed_form(x, n):
    lo, hi = stats.wilson(x / n, n)
    assert (lo, hi) == pytest.approx(wilson_roots(x, n), abs=1e-12)
    assert stats.half_width(x / n, n) == pytest.approx((hi - lo) / 2)


@pytest.mark.parametrize("b,c", [(0, 0), (0, 5), (5, 0), (3, 9), (7, 7), (14, 69), (240, 200)])
def test_mcnemar_is_the_exact_binomial(b, c):
    want = 1.0 if b + c == 0 else binom_two_sided(b, c)
    assert stats.mcnemar_p(b, c) == pytest.approx(want, rel=1e-12)


def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_sample():
    for n in range(1, 8):
        for c in range(n + 1):
            flags = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                assert stats.pass_at_k(n, c, k) == pytest.approx(pass_brute(flags, k)), (n, c, k)


def test_majority_breaks_ties_by_first_occurrence():
    assert stats.majority(["b", "a", "a", "b", "c"]) == (0, 0.4)
    assert stats.majority(["c", "a", "a"]) == (1, 2 / 3)
    assert stats.majority([]) == (-1, 0.0)


@pytest.mark.parametrize("kind", ["right_wrong", "continuous"])
def test_bootstrap_agrees_with_plain_resampling(kind):
    rnd = random.Random(3)
    if kind == "right_wrong":  # differences -1, 0, 1: the multinomial shortcut
        d = [float(rnd.choice((-1, 0, 0, 1, 1))) for _ in range(150)]
    else:  # > 64 distinct values: items are resampled
        d = [rnd.uniform(-0.6, 1.0) for _ in range(150)]
    lo, hi = stats.paired_bootstrap(d)
    plo, phi = bootstrap_plain(d)
    assert lo == pytest.approx(plo, abs=0.02) and hi == pytest.approx(phi, abs=0.02)
    assert lo < sum(d) / len(d) < hi
    assert stats.paired_bootstrap(d) == (lo, hi)  # the fixed seed
    assert stats.paired_bootstrap(d, seed=1) != (lo, hi)


# ---- compare on fake runs ------------------------------------------------------------------

LETTERS = "ABCD"


def answers(seed: int, n: int) -> list[str]:
    rnd = random.Random(seed)
    return [rnd.choice(LETTERS) for _ in range(n)]


def letter_runs(root: Path, n: int = 80) -> tuple[list[Path], dict[str, dict[str, bool]]]:
    """Three runs of the same letters questions, and each run's truth (id -> right)."""
    expected = answers(0, n)
    outs = [answers(1, n), answers(2, n), expected[:60] + answers(3, n - 60)]
    dirs, truth = [], {}
    for j, out in enumerate(outs):
        recs = [record(f"q{i:03d}", o, expected=e) for i, (o, e) in enumerate(
            zip(out, expected, strict=True))]
        recs.append(record("free", "whatever"))  # no expected answer: not scored
        recs.append(record(f"only{j}", "A", expected="A"))  # scored in this run only
        if j == 1:  # an error scores 0; an item edited since: its latest record counts
            recs[5] = record("q005", error="image unreadable", expected=expected[5])
            recs.append(record("q007", expected[7], expected=expected[7], key="edited"))
        d = write_run(root, f"{j}" * 16, recs, config={"sampling": {"seed": j}})
        score_run(d)
        right = {r["id"]: r["status"] == "ok" and r["output"] == r["expected"]
                 for r in recs if r.get("expected") is not None}
        dirs.append(d)
        truth[d.name] = right
    return dirs, truth


def compare_json(root: Path, *args: str, capsys) -> dict:
    assert main(["--root", str(root), "compare", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_json_is_the_documented_shape_and_every_number_checks(tmp_path, capsys):
    dirs, truth = letter_runs(tmp_path)
    got = compare_json(tmp_path, *(d.name[:6] for d in dirs), capsys=capsys)
    assert list(got) == ["runs", "pairs"]
    for run, d in zip(got["runs"], dirs, strict=True):
        assert list(run) == ["run", "n", "accuracy", "ci95"]
        right = truth[d.name]
        x, n = sum(right.values()), len(right)
        assert (run["run"], run["n"]) == (d.name, n) == (d.name, 81)
        assert run["accuracy"] == pytest.approx(x / n)
        assert run["ci95"] == pytest.approx(list(wilson_roots(x, n)), abs=1e-12)
    base = truth[dirs[0].name]
    assert len(got["pairs"]) == 2
    for pair, d in zip(got["pairs"], dirs[1:], strict=True):
        assert list(pair) == ["base", "other", "n_paired", "n_base", "n_other", "warning",
                              "delta", "ci95", "mcnemar_p", "right_to_wrong", "wrong_to_right"]
        other = truth[d.name]
        # pairs are by item key: the second run's q007 was edited (another key), so it is
        # another question and not paired
        ids = [i for i in base if i in other and not (d == dirs[1] and i == "q007")]
        assert (pair["base"], pair["other"], pair["n_paired"]) == (dirs[0].name, d.name,
                                                                   len(ids))
        # each side's n beside n_paired, and a warning: items of each are not in the other
        assert (pair["n_base"], pair["n_other"]) == (81, 81)
        assert pair["warning"].startswith(f"paired on {len(ids)} items of 81 and 81")
        b = sum(base[i] and not other[i] for i in ids)
        c = sum(other[i] and not base[i] for i in ids)
        assert (pair["right_to_wrong"], pair["wrong_to_right"]) == (b, c)
        assert pair["delta"] == pytest.approx((c - b) / len(ids))
        assert pair["mcnemar_p"] == pytest.approx(binom_two_sided(b, c), rel=1e-12)
        diffs = [float(other[i]) - float(base[i]) for i in ids]
        lo, hi = pair["ci95"]
        assert (lo, hi) == pytest.approx(bootstrap_plain(diffs), abs=0.03)
    # the third run copies 60 expected answers: a real difference, the second's is noise
    assert got["pairs"][1]["mcnemar_p"] < 0.05 < got["pairs"][0]["mcnemar_p"]


def test_compare_text_lists_the_flips(tmp_path, capsys):
    dirs, truth = letter_runs(tmp_path)
    base, other = truth[dirs[0].name], truth[dirs[2].name]
    w2r = [i for i in base if i in other and other[i] and not base[i]]
    assert main(["--root", str(tmp_path), "compare", dirs[0].name, dirs[2].name,
                 "--n", "3"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"wrong→right ({len(w2r)}): {' '.join(w2r[:3])} … {len(w2r) - 3} more" in out
    assert "sampling.seed=0" in out and "sampling.seed=2" in out  # what differs
    runs = [load_scored(d) for d in (dirs[0], dirs[2])]
    result = compare_runs(runs)
    assert result["pairs"][0]["flips"]["wrong_to_right"] == w2r  # the report's API
    (one,) = item_samples(runs[1], w2r[0])  # n = 1: the output is the one sample
    assert one["text"] == runs[1].items[w2r[0]]["output"] and one["correct"] is True


def test_compare_sweep_puts_every_point_against_the_first(tmp_path, capsys):
    dirs, _ = letter_runs(tmp_path)
    sweep = tmp_path / ".sweeps" / "2026-12-02_10-00-00"
    sweep.mkdir(parents=True)
    failed = {"hash": None, "status": "failed"}  # a point that failed has no run
    (sweep / "runs.json").write_text(json.dumps([{"hash": d.name} for d in dirs] + [failed]))
    got = compare_json(tmp_path, "--sweep", sweep.name, capsys=capsys)
    assert [p["other"] for p in got["pairs"]] == [d.name for d in dirs[1:]]
    assert {p["base"] for p in got["pairs"]} == {dirs[0].name}


def test_compare_partial_scores_use_the_bootstrap_not_mcnemar(tmp_path, capsys):
    want = {"a": "1", "b": "2"}
    outs = [['{"a": "1", "b": "2"}', '{"a": "1", "b": "9"}', '{"a": "0", "b": "9"}'] * 10,
            ['{"a": "1", "b": "9"}', '{"a": "1", "b": "2"}', '{"a": "1", "b": "9"}'] * 10]
    dirs = []
    for j, out in enumerate(outs):
        recs = [record(f"j{i}", o, expected=want, scorer="json") for i, o in enumerate(out)]
        dirs.append(write_run(tmp_path, f"{j}" * 16, recs))
        score_run(dirs[-1])
    (pair,) = compare_json(tmp_path, *(d.name for d in dirs), capsys=capsys)["pairs"]
    # scores 1, .5, 0 -> .5, 1, .5: differences -.5, +.5, +.5
    assert pair["mcnemar_p"] is None and pair["delta"] == pytest.approx(1 / 6)
    assert (pair["right_to_wrong"], pair["wrong_to_right"]) == (10, 10)
    diffs = [-0.5, 0.5, 0.5] * 10
    assert pair["ci95"] == pytest.approx(list(bootstrap_plain(diffs)), abs=0.03)


def test_compare_user_errors_are_one_sentence(tmp_path, capsys):
    d = write_run(tmp_path, "a" * 16, [record("q", "A", expected="A")])
    unscored = write_run(tmp_path, "b" * 16, [record("q", "A", expected="A")])
    assert main(["--root", str(tmp_path), "compare", "aaa"]) == 2
    assert "at least two runs" in capsys.readouterr().err
    score_run(d)
    assert main(["--root", str(tmp_path), "compare", "aaa", "bbb"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"Run {unscored.name} has no scores.jsonl" in err and "results score" in err


def test_compare_never_imports_vllm_or_torch(tmp_path):
    dirs, _ = letter_runs(tmp_path)
    code = ("import sys; from runner.results.cli.main import main; main(sys.argv[1:]); "
            "assert not {'vllm', 'torch'} & set(sys.modules), 'heavy import'")
    p = subprocess.run([sys.executable, "-c", code, "--root", str(tmp_path), "compare",
                        dirs[0].name, dirs[1].name], cwd=ROOT, text=True, capture_output=True,
                       timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    assert "McNemar p" in p.stdout
    lines = p.stdout.splitlines()
    # its row, its pairing warning (q007 edited), its flips both ways, and the runs table
    assert all(len(x) <= 80 for x in lines) and sum(dirs[1].name in x for x in lines) == 5


# ---- sampling.n > 1 ------------------------------------------------------------------------


def test_every_sample_is_scored_with_pass_at_k_majority_and_agreement(tmp_path, capsys):
    samples = {"s0": ["A", "B", "A", "A"], "s1": ["B", "c", "C", "D"], "s2": ["D", "D", "B", "B"],
               "s3": ["C", "C", "C", "C"]}
    expected = {"s0": "A", "s1": "C", "s2": "B", "s3": "A"}
    recs = [record(i, s[0], expected=expected[i],
                   outputs=[{"text": t, "finish_reason": "stop"} for t in s])
            for i, s in samples.items()]
    recs.append(record("s4", error="too long", expected="A"))  # no samples: wrong
    d = write_run(tmp_path, "c" * 16, recs, config={"sampling": {"n": 4}})
    m = score_run(d)["samples"]
    flags = {i: [t.upper() == expected[i] for t in s] for i, s in samples.items()}
    flags["s4"] = []
    mean = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
    assert m["n"] == 4
    assert m["pass@1"] == mean([pass_brute(f, 1) if f else 0 for f in flags.values()])
    assert m["pass@n"] == mean([pass_brute(f, 4) if f else 0 for f in flags.values()])
    # majority answers: A (right), c (normalized: twice), D (first of a 2-2 tie), C, none
    assert m["majority"] == mean([1, 1, 0, 0, 0])
    assert m["agreement"] == mean([3 / 4, 2 / 4, 2 / 4, 4 / 4])
    rows = {r["id"]: r for r in map(json.loads, (d / "scores.jsonl").read_text().splitlines())}
    assert rows["s1"]["samples"] == [0.0, 1.0, 1.0, 0.0] and rows["s4"]["samples"] == []
    run = load_scored(d)
    assert [s["correct"] for s in item_samples(run, "s2")] == [False, False, True, True]
    assert compare_runs([run, run])["runs"][0]["samples"] == m
    assert main(["--root", str(tmp_path), "score", d.name]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"pass@1 {m['pass@1']} pass@n {m['pass@n']} majority {m['majority']}" in out


# ---- the sweep table and ls ---------------------------------------------------------------


def test_sweep_table_marks_points_that_differ_from_the_first(tmp_path):
    dirs, truth = letter_runs(tmp_path)
    rows = [{"num": j, "overrides": ["model=pixtral_tiny", f"sampling.seed={j}"],
             "hash": d.name, "folder": str(d), "status": "computed", "items": 83,
             "tokens_per_s": 95.2, "metrics": json.loads((d / "metrics.json").read_text())}
            for j, d in enumerate(dirs)]
    c = Console(width=80, record=True, file=open(os.devnull, "w"))
    c.print(table(rows, tmp_path / ".sweeps" / "x"))
    text = c.export_text()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    lines = {r["hash"]: next(x for x in text.splitlines() if r["hash"] in x) for r in rows}
    for d in dirs:
        right = truth[d.name]
        x, n = sum(right.values()), len(right)
        lo, hi = wilson_roots(x, n)
        cell = f"{round(x / n, 4):.3f} ±{(hi - lo) / 2:.3f}"
        assert cell in lines[d.name], lines[d.name]
    assert [("*" in lines[d.name]) for d in dirs] == [False, False, True]
    assert "* paired p < 0.05 against the first point" in text


def results(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m runner.results` in a process of its own, 250 columns wide."""
    return subprocess.run([sys.executable, "-m", "runner.results", "--root", str(root), *args],
                          cwd=ROOT, text=True, capture_output=True, timeout=120,
                          env={**os.environ, "COLUMNS": "250"})


def test_ls_shows_the_half_width(tmp_path):
    dirs, truth = letter_runs(tmp_path)
    p = results(tmp_path, "ls")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for d in dirs:
        right = truth[d.name]
        x, n = sum(right.values()), len(right)
        lo, hi = wilson_roots(x, n)
        assert f"accuracy={round(x / n, 4):.3g}±{(hi - lo) / 2:.3f} of {n}" in out
