"""The evaluation commands of `python -m runner.results`: score, judge, compare and card."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.text import Text

from runner.errors import UserError
from runner.results.cli.tables import compare_tables, err, out
from runner.results.runs.load import load_run, named_runs, ref_of


def cmd_compare(a: argparse.Namespace) -> None:
    from runner.results.card.compare import as_json, compare_runs, load_scored

    dirs = named_runs(a.root, a.hashes, a.sweep)
    if len(dirs) < 2:
        raise UserError("Name at least two runs to compare: BASE OTHER [OTHER...], or --sweep "
                        "DIR with two points or more.")
    runs = [load_scored(d) for d in dirs]
    result = compare_runs(runs)
    if a.json:
        print(json.dumps(as_json(result)))
        return
    for t in compare_tables(runs, result, a.n):
        out.print(t)


def cmd_card(a: argparse.Namespace) -> None:
    from runner.results.card.card import card, tables

    dirs = named_runs(a.root, a.hashes, a.sweep)
    if not dirs:
        raise UserError("Name the runs for the card: run hashes, --sweep DIR, or both.")
    result = card([load_run(d) for d in dirs], a.by, a.judge, a.ref)
    if a.json:
        print(json.dumps(result))
        return
    for t in tables(result):
        out.print(t)


def cmd_score(a: argparse.Namespace) -> None:
    from runner.results.scoring.score import score_run
    from runner.store.view import read_view

    for ref in [ref_of(a.root, h) for h in a.hashes]:
        view = read_view(ref.path, ref.view)
        if ref.view and view is None:
            raise UserError(f"Run {ref.path.name} has no view '{ref.view}'.")
        m = score_run(ref.path, a.set, view=view, force=True)
        accuracy = "n/a" if m["accuracy"] is None else f"{m['accuracy']:.1%}"
        tags = "  ".join(f"{t} {v['accuracy']:.0%}" for t, v in m["by_tag"].items())
        fields = "  ".join(f"{f} {v['accuracy']:.0%}" for f, v in (m.get("fields") or {}).items())
        valid = (f"  schema_valid {m['schema_valid']:.0%} of {m['constrained']}"
                 if "schema_valid" in m else "")
        if m.get("samples"):  # sampling.n > 1
            valid += "  " + " ".join(f"{k} {m['samples'][k]}" for k in (
                "pass@1", "pass@n", "majority", "agreement")) + f" (n={m['samples']['n']})"
        if len(m.get("by_metric") or {}) > 1:  # several scorers (the harness's metrics)
            valid += "  " + "  ".join(f"{k} {v['mean']:.1%}" for k, v in m["by_metric"].items()
                                      if v["mean"] is not None)
        name = ref.path.name + (f"@{view.id}" if view else "")
        out.print(Text(f"{name}: accuracy {accuracy} ({m['correct']}/{m['scored']} scored, "
                       f"{m['errors']} errors)  {tags}".rstrip() + valid
                       + (f"\n  fields: {fields}" if fields else "")))


def judge_config(overrides: list[str]) -> Any:
    """The `judge` group composed from conf/judging.yaml with the command line's overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from runner.config import CONF, register

    register()
    try:
        with initialize_config_dir(CONF, version_base="1.3"):
            return compose("judging", overrides=overrides).judge
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(f"The judge config does not compose: {str(e).splitlines()[0]}") from None


def cmd_judge(a: argparse.Namespace) -> None:
    from runner.results.judging.judge import judge_run

    refs = [x for x in a.args if "=" not in x]
    j = judge_config([x for x in a.args if "=" in x])
    if not refs:
        raise UserError("Name the runs to judge: a hash prefix or a run folder, then judge "
                        "overrides (judge=mm_mt_bench judge.url=...).")
    from runner.store.view import read_view

    for ref in [ref_of(a.root, h) for h in refs]:
        d, view = ref.path, read_view(ref.path, ref.view)
        if ref.view and view is None:
            raise UserError(f"Run {d.name} has no view '{ref.view}'.")
        seen = iter(range(1, 1 << 62))
        tick = None if a.json else (lambda _line, d=d, seen=seen: (n := next(seen)) % 50 or
                                    err.print(f"{d.name}: {n} judged"))
        m = judge_run(d, j, on_line=tick, view=view)
        if a.json:
            print(json.dumps(m))
            continue
        out.print(Text(judged_line(d.name, m)))


def judged_line(name: str, m: dict[str, Any]) -> str:
    """One run's judged score: the micro and macro averages with their intervals, counts, cost."""
    def iv(x: dict[str, Any]) -> str:
        if x.get("mean") is None:
            return "n/a"
        lo, hi = x["ci95"]
        return f"{x['mean']:.2f} [{lo:.2f}, {hi:.2f}]" if lo is not None else f"{x['mean']:.2f}"

    j, c = m["judge"], m["cost"]
    return (f"{name}: judge {j['name']} ({j['id']}, {j['model']}): micro {iv(m['micro_average'])}"
            f" of {m['rated']} rated, macro {iv(m['macro_average'])}; unrated {m['unrated']}, "
            f"judge errors {m['error']}, not judged {m['missing']}; {c['asks']} calls, "
            f"{c['prompt_tokens']} prompt + {c['completion_tokens']} completion tokens")
