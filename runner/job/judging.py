"""The judge step of `python -m runner` (docs/judges.md): with a judge configured (`judge=...`,
the same group and keys as `python -m runner.results judge`), a run whose set is judged is
judged once its outputs are stored, by that command's code (judging/judge.py: a line stored is
never asked again, so a rerun asks only what is missing). The scored benchmarks (MMMU, ...) are
not judged: their metric is their score."""

from __future__ import annotations

from omegaconf import DictConfig

from runner.console import console
from runner.store.rundir import RunDir
from runner.store.view import View


def judged(cfg: DictConfig) -> bool:
    """Whether a judge is configured and rates this config's set: a benchmark the harness
    judges (MM-MT-Bench), or a set that is no benchmark of the harness."""
    from runner.results.card.card import BENCHMARKS, JUDGED, benchmark_named

    bench = benchmark_named(str(cfg.prompts.name))
    return cfg.get("judge") is not None and (bench in JUDGED or bench not in BENCHMARKS.values())


def judge_step(cfg: DictConfig, rd: RunDir, view: View) -> str | None:
    """The configured judge over the run's view; the judge's id (None: nothing to judge)."""
    if not judged(cfg) or not rd.exists():
        return None
    from runner.engine.connect import origin
    from runner.results.cli.evaluate import judged_line
    from runner.results.judging.judge import judge_run

    url = str(cfg.judge.url)
    at = "the store's runner.serve" if url == "serve" else origin(url)  # no secrets of the URL
    console.print(f"judging with {cfg.judge.name} at {at}…", highlight=False)
    m = judge_run(rd.path, cfg.judge, view=view)
    console.print(judged_line(rd.hash, m), highlight=False)
    return m["judge"]["id"]
