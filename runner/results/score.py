"""Scoring stored results: scorers, per-run scores.jsonl and metrics.json.

Runs on results.jsonl alone (no vLLM, no torch), so changing a scorer never regenerates.
A scorer is a string (docs/results.md, "Scoring and reports"):
  exact | contains | regex | regex:<pattern> | numeric | numeric:<tol> | numeric:<tol>% | choice
  | json (the output parsed as JSON, compared with an expected object field by field)
chosen per item (the record's or the set item's `scorer`), per set (top-level `scorer:` in the
set file) or `exact`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.files import atomic_write, read_json, read_yaml
from runner.record import Record, counts, latest_by_id, read_records
from runner.results.runs import flatten
from runner.results.stats import majority, pass_at_k

DEFAULT_SCORER = "exact"


@dataclass
class Score:
    score: float
    reason: str
    fields: dict[str, bool] | None = None  # the json scorer's: dotted field -> correct

    @property
    def correct(self) -> bool:
        return self.score >= 1.0


# --- normalization --------------------------------------------------------------------------

_EDGE = " \t\n\r\"'`*_"


def normalize(s: str) -> str:
    """Case, whitespace, trailing punctuation and wrapping quotes/markdown don't count."""
    s = " ".join(str(s).split()).casefold().strip(_EDGE)
    return s.rstrip(".,;:!?。").strip(_EDGE)


# --- scorers --------------------------------------------------------------------------------


def exact(output: str, expected: str) -> Score:
    ok = normalize(output) == normalize(expected)
    return Score(float(ok), "equal after normalization" if ok else
                 f"{normalize(output)[:60]!r} != {normalize(expected)!r}")


def contains(output: str, expected: str) -> Score:
    ok = normalize(expected) in normalize(output)
    return Score(float(ok), f"{'found' if ok else 'no'} {normalize(expected)!r} in output")


def regex(output: str, expected: str, pattern: str | None) -> Score:
    """No pattern: `expected` is the pattern. A pattern: it extracts the answer (group 1 or
    the whole match of its last occurrence), compared with `expected` like `exact`."""
    if pattern is None:
        ok = re.search(expected, output, re.IGNORECASE | re.MULTILINE) is not None
        return Score(float(ok), f"/{expected}/ {'matches' if ok else 'does not match'}")
    found = list(re.finditer(pattern, output, re.MULTILINE))
    if not found:
        return Score(0.0, f"/{pattern}/ found nothing")
    m = found[-1]
    got = m.group(1) if m.re.groups else m.group(0)
    ok = normalize(got) == normalize(expected)
    return Score(float(ok), f"extracted {got!r}" + ("" if ok else f" != {expected!r}"))


# MMMU's number forms (eval_utils.extract_numbers): 1,234  1.5e3  -0.5  .5  12
_NUM = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?[eE][+-]?\d+|-?\d*\.\d+|-?\d+")
# Words after which a model states its answer; numbers after the last one are the candidates.
_ANSWER_CUE = re.compile(r"(?:\b(?:answer|result|total|is|are|equals|therefore|thus|so)\b|=)",
                         re.IGNORECASE)


def numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in _NUM.findall(text)]


def parse_tolerance(spec: str | None) -> tuple[float, float]:
    """`0.01` -> absolute, `2%` -> relative; none -> float equality (1e-9 relative)."""
    if not spec:
        return 0.0, 1e-9
    if spec.endswith("%"):
        return 0.0, float(spec[:-1]) / 100
    return float(spec), 1e-9


def numeric(output: str, expected: str, tol: str | None) -> Score:
    want = numbers(expected)
    if not want:
        return Score(0.0, f"expected {expected!r} is not a number")
    cues = list(_ANSWER_CUE.finditer(output))
    tail = output[cues[-1].end():] if cues else output
    got = numbers(tail) or numbers(output)
    if not got:
        return Score(0.0, "no number in output")
    abs_tol, rel_tol = parse_tolerance(tol)
    for g in got:
        if math.isclose(g, want[0], rel_tol=rel_tol, abs_tol=abs_tol):
            return Score(1.0, f"{g:g} ≈ {want[0]:g}")
    return Score(0.0, f"{', '.join(f'{g:g}' for g in got[:5])} ≠ {want[0]:g}")


def letters(options: Sequence[str] | None, expected: str) -> list[str]:
    """Choice letters: one per option, else A-D (widened to include the expected letter)."""
    if options:
        return [chr(ord("A") + i) for i in range(len(options))]
    last = max("D", expected.strip().upper()[:1] or "D")
    return [chr(c) for c in range(ord("A"), ord(last) + 1)]


def parse_choice(response: str, choices: Sequence[str],
                 options: Sequence[str] | None = None) -> str | None:
    """The chosen letter, after MMMU's parse_multi_choice_response (eval_utils.py):
    "(B)", then " B ", then "B." anywhere (the last one wins when several appear); extended
    with "B)" and markdown "**B**"; then an option's text named instead of its letter.
    Where MMMU picks a random letter when nothing is found, this returns None (wrong)."""
    text = re.sub(r"[*_`]+", " ", response)  # **C** / __C__ / `C` -> C
    for ch in ",.!?;:'":
        text = text.strip(ch)
    text = f" {text.strip()} "
    if len(text.strip()) == 1 and text.strip().upper() in choices:  # a bare "b"
        return text.strip().upper()
    # MMMU's three forms first, in its order; then "B)" and "B:" (extensions)
    for form in ("({})", " {} ", "{}.", " {})", " {}:"):
        found = {c: text.rfind(form.format(c)) for c in choices}
        found = {c: i for c, i in found.items() if i >= 0}
        if found:
            return max(found, key=lambda c: found[c])
    if options:  # the option's text instead of its letter: the last-named option wins
        low = f" {normalize(response)} "
        best: tuple[int, int, str] | None = None
        for c, opt in zip(choices, options, strict=True):
            o = normalize(opt)
            word = re.compile(rf"(?<!\w){re.escape(o)}(?!\w)")
            hits = [m.start() for m in word.finditer(low)] if o else []
            if hits and (best is None or (hits[-1], len(o)) > best[:2]):
                best = (hits[-1], len(o), c)
        if best:
            return best[2]
    return None


def choice(output: str, expected: str, options: Sequence[str] | None) -> Score:
    choices = letters(options, expected)
    want = expected.strip().upper().strip("().")
    if want not in choices and options:  # expected given as the option's text
        want = next((c for c, o in zip(choices, options, strict=True)
                     if normalize(o) == normalize(expected)), want)
    got = parse_choice(output, choices, options)
    if got is None:
        return Score(0.0, "no option letter or option text found")
    return Score(float(got == want), f"chose {got}" + ("" if got == want else f", not {want}"))


def parse_json(text: str) -> Any:
    """The output as JSON: the whole text, else its first {...} or [...] span."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    m = re.search(r"[{\[].*[}\]]", text, re.DOTALL)
    if m:
        try:
            return json.loads(m.group(0))
        except ValueError:
            pass
    raise ValueError("not JSON")


def _same(got: Any, want: Any) -> bool:
    """Field equality: numbers by value (a numeric string counts), text after normalize."""
    if isinstance(want, bool) or isinstance(got, bool):
        return got == want
    try:
        return math.isclose(float(got), float(want), rel_tol=1e-9)
    except (TypeError, ValueError):
        pass
    if isinstance(want, (list, dict)):
        return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    return got is not None and normalize(str(got)) == normalize(str(want))


def json_fields(output: str, expected: Any) -> Score:
    """Every field of the expected object (nested keys dotted) against the parsed output."""
    want = expected if isinstance(expected, (dict, list)) else json.loads(str(expected))
    want_f = flatten(want)
    try:
        got = flatten(parse_json(output))
    except ValueError:
        return Score(0.0, "output is not JSON", {k: False for k in want_f})
    fields = {k: _same(got.get(k), v) for k, v in want_f.items()}
    wrong = [k for k, ok in fields.items() if not ok]
    n = len(fields) or 1
    return Score(sum(fields.values()) / n, f"{n - len(wrong)}/{n} fields"
                 + (f"; wrong: {', '.join(wrong[:5])}" if wrong else ""), fields)


SCORERS = ("exact", "contains", "regex", "numeric", "choice", "json")


def check_spec(spec: str) -> str:
    name, _, arg = spec.partition(":")
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {spec!r}; use one of: exact, contains, regex, "
                         "regex:<pattern>, numeric, numeric:<tol>, numeric:<tol>%, choice, json")
    if name == "numeric" and arg:
        parse_tolerance(arg)
    if name == "regex" and arg:
        re.compile(arg)
    return spec


def score_output(spec: str, output: str, expected: Any,
                 options: Sequence[str] | None = None) -> Score:
    name, sep, arg = check_spec(spec).partition(":")
    if name == "json":
        return json_fields(output, expected)
    expected = json.dumps(expected) if isinstance(expected, (dict, list)) else str(expected)
    if name == "exact":
        return exact(output, expected)
    if name == "contains":
        return contains(output, expected)
    if name == "regex":
        return regex(output, expected, arg if sep else None)
    if name == "numeric":
        return numeric(output, expected, arg or None)
    return choice(output, expected, options)


# --- a run ----------------------------------------------------------------------------------


def set_file_of(run_dir: Path) -> Path | None:
    """The prompt set a run used, from its config.yaml (prompts.root / prompts.name, relative
    to the current directory), found the way the planner finds it."""
    p = read_yaml(run_dir / "config.yaml", {}).get("prompts")
    if not isinstance(p, dict) or "name" not in p:
        return None
    name, root = str(p["name"]), str(p.get("root") or "prompts")
    try:
        from runner.plan import find_set

        return find_set(name, root)
    except Exception:  # noqa: BLE001 - an unknown set: score without it
        return None


@dataclass
class SetMeta:
    scorer: str | None = None  # the set's `scorer:`
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> scorer, metadata
    root: Path | None = None  # where the set's image paths resolve


def read_set_meta(set_file: Path | None) -> SetMeta:
    """Scorers, metadata and image root of a set, with the planner's reader (every set
    format); plain YAML items if that reader is unavailable or refuses the file."""
    if set_file is None:
        return SetMeta()
    f = Path(set_file)
    try:
        from runner.sources import read_set

        info, specs = read_set(f)
        items = {s.id: {"scorer": s.scorer, "metadata": s.metadata} for s in specs}
        return SetMeta(info.scorer, items, info.root)
    except Exception:  # noqa: BLE001 - older planner or an edited set file: read it as YAML
        pass
    try:
        doc = yaml.safe_load(f.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        print(f"warning: {f}: {e}; scoring without the set file", file=sys.stderr)
        return SetMeta()
    if not isinstance(doc, dict):
        return SetMeta(root=f.parent)
    items = {str(i["id"]): i for i in doc.get("items") or [] if isinstance(i, dict) and "id" in i}
    return SetMeta(doc.get("scorer"), items, (f.parent / str(doc.get("root", "."))).resolve())


def _up_to_date(run_dir: Path, set_file: Path | None) -> dict[str, Any] | None:
    """Stored metrics if they are newer than every input, this module included (so a cached
    rerun of a big set skips re-reading it, and a changed scorer still rescores)."""
    try:
        done = min((run_dir / n).stat().st_mtime_ns for n in ("scores.jsonl", "metrics.json"))
        inputs = [*run_dir.glob("results*.jsonl"), run_dir / "manifest.json", Path(__file__)]
        if any(p.exists() and p.stat().st_mtime_ns >= done
               for p in inputs + ([Path(set_file)] if set_file else [])):
            return None
    except OSError:
        return None
    return read_json(run_dir / "metrics.json", {}) or None


def score_run(run_dir: Path, set_file: Path | None = None, *,
              force: bool = False) -> dict[str, Any]:
    """Score every record with an expected answer; write scores.jsonl and metrics.json.

    Without `set_file`, the set named by the run's config.yaml is used when it exists (for
    set-level scorers and choice options). Metrics count each id once (its latest record);
    an error record with an expected answer scores 0. Unless `force`, stored metrics newer
    than the results, the manifest, the set file and the scorers are returned as they are.
    """
    run_dir = Path(run_dir)
    set_file = set_file or set_file_of(run_dir)
    if not force and (stored := _up_to_date(run_dir, set_file)) is not None:
        return stored
    meta_set = read_set_meta(set_file)
    set_scorer, items = meta_set.scorer, meta_set.items
    records = list(read_records(run_dir).values())
    n = (read_yaml(run_dir / "config.yaml", {}).get("sampling") or {}).get("n") or 1
    multi = n > 1 or any(r.get("outputs") for r in records)  # sampling.n > 1: every sample
    scores, latest = [], {}
    for r in records:
        if r.get("expected") is None:
            continue
        item = items.get(str(r["id"]), {})
        spec = r.get("scorer") or item.get("scorer") or set_scorer or DEFAULT_SCORER
        meta = r.get("metadata") or item.get("metadata") or {}
        if r.get("status") != "ok":
            s = Score(0.0, f"generation error: {r.get('error', 'unknown')}"[:200])
        else:
            s = _score(spec, r.get("output") or "", r["expected"], meta.get("options"))
        row = {"id": r["id"], "key": r["key"], "score": s.score, "correct": s.correct,
               "scorer": spec, "reason": s.reason}
        if s.fields is not None:
            row["fields"] = s.fields
        if multi:
            row |= _samples(spec, r, s, meta.get("options"))
        scores.append(row)
        latest[r["id"]] = (row, r.get("tags") or [])
    atomic_write(run_dir / "scores.jsonl",
                  "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in scores))
    metrics = _metrics(records, list(latest.values()), run_dir)
    metrics |= schema_metrics(latest_by_id(records).values(), run_dir)
    if multi:
        metrics["samples"] = samples_metrics([row for row, _ in latest.values()])
    atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return metrics


def _score(spec: str, output: str, expected: Any, options: Sequence[str] | None) -> Score:
    try:
        return score_output(spec, output, expected, options)
    except (ValueError, re.error) as e:
        return Score(0.0, f"bad scorer: {e}")


def _samples(spec: str, r: Record, first: Score, options: Sequence[str] | None
             ) -> dict[str, Any]:
    """sampling.n > 1: every sample's score, the majority answer's score (answers compared
    normalized, ties to the first seen) and the agreement (the share giving that answer).
    A generation error has no samples."""
    if r.get("status") != "ok":
        return {"samples": []}
    texts = [o.get("text") or "" for o in r.get("outputs") or []] or [r.get("output") or ""]
    scores = [first.score] + [_score(spec, t, r["expected"], options).score for t in texts[1:]]
    top, agreement = majority([normalize(t) for t in texts])
    return {"samples": scores, "majority": scores[top], "agreement": agreement}


def samples_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Over scored items (sampling.n > 1): `pass@1` and `pass@n` (the unbiased estimator, each
    item with its own number of samples, a sample right when its score is 1), `majority`
    (majority-vote accuracy), `agreement` (mean per-item agreement) and `n` (most samples).
    An item without samples (a generation error) counts as wrong."""
    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    per = [(len(s), sum(x >= 1.0 for x in s)) for s in (r.get("samples") or [] for r in rows)]
    return {"n": max((k for k, _ in per), default=0),
            "pass@1": mean([pass_at_k(k, c, 1) for k, c in per]),
            "pass@n": mean([pass_at_k(k, c, k) for k, c in per]),
            "majority": mean([r.get("majority") or 0.0 for r in rows]),
            "agreement": mean([r["agreement"] for r in rows if "agreement" in r])}


def _metrics(records: list[Record], latest: list[tuple[dict, list[str]]],
             run_dir: Path) -> dict[str, Any]:
    by_tag: dict[str, list[float]] = defaultdict(list)
    by_field: dict[str, list[float]] = defaultdict(list)
    for row, tags in latest:
        for t in tags:
            by_tag[str(t)].append(row["score"])
        for f, ok in (row.get("fields") or {}).items():
            by_field[f].append(float(ok))
    items = counts(latest_by_id(records).values())  # each id once: its latest record
    manifest = read_json(run_dir / "manifest.json", {})
    n = len(latest)
    acc = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {"accuracy": acc([row["score"] for row, _ in latest]), "scored": n,
            "correct": sum(row["correct"] for row, _ in latest),
            "items": items.stored,
            "by_tag": {t: {"accuracy": acc(v), "scored": len(v)}
                       for t, v in sorted(by_tag.items())},
            **({"fields": {f: {"accuracy": acc(v), "scored": len(v)}
                           for f, v in sorted(by_field.items())}} if by_field else {}),
            "errors": items.errors,
            "completion_tokens_per_s": (manifest.get("throughput") or {})
            .get("completion_tokens_per_s")}


# --- constrained runs: does each output satisfy its structured_outputs? --------------------


def satisfies(so: dict[str, Any], text: str) -> bool | None:
    """Whether `text` meets the constraint; None for a kind checked only by the engine
    (grammar, structural_tag)."""
    if so.get("choice") is not None:
        return text in so["choice"]
    if so.get("regex") is not None:
        return re.fullmatch(so["regex"], text) is not None
    if so.get("json") is not None or so.get("json_object"):
        try:
            v = json.loads(text)
        except ValueError:
            return False
        if so.get("json") is None:
            return isinstance(v, dict)
        import jsonschema

        return jsonschema.validators.validator_for(so["json"])(so["json"]).is_valid(v)
    return None


def schema_metrics(records: Any, run_dir: Path) -> dict[str, Any]:
    """`schema_valid`: the share of constrained outputs that satisfy their constraint (the
    run's structured_outputs, or the record's own override), over `constrained` outputs."""
    from runner.errors import UserError
    from runner.sampling import check_structured

    cfg = read_yaml(run_dir / "config.yaml", {}).get("sampling") or {}
    try:
        run_so = check_structured(cfg.get("structured_outputs") or None, "", Path.cwd())
    except UserError:  # a schema file that moved away: the records' own constraints only
        run_so = None
    valid = checked = 0
    for r in records:
        over = r.get("sampling") or {}
        so = over["structured_outputs"] if "structured_outputs" in over else run_so
        if not so or r.get("status") != "ok":
            continue
        ok = satisfies(so, r.get("output") or "")
        if ok is not None:
            checked, valid = checked + 1, valid + ok
    return {"schema_valid": round(valid / checked, 4), "constrained": checked} if checked else {}
