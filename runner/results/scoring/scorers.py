"""The scorers: one output against its expected answer, no run, no files.

A scorer is a string (docs/results.md, "Scoring and reports"):
  exact | contains | regex | regex:<pattern> | numeric | numeric:<tol> | numeric:<tol>% | choice
  | json (the output parsed as JSON, compared with an expected object field by field)
  | the harness's metrics (metrics.py): explicit_prompt_relaxed_correctness
  | anywhere_in_answer_relaxed_correctness | anls | anls:<threshold> | vqa_match
`expected` may be a list of references: the harness's metrics apply their own rule for lists;
the others score the best reference (json compares a list as a JSON value).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.results.runs.load import flatten
from runner.results.scoring import metrics

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


SCORERS = ("exact", "contains", "regex", "numeric", "choice", "json", *metrics.HARNESS_METRICS)


def check_spec(spec: str) -> str:
    name, _, arg = spec.partition(":")
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {spec!r}; use one of: exact, contains, regex, "
                         "regex:<pattern>, numeric, numeric:<tol>, numeric:<tol>%, choice, json, "
                         + ", ".join(metrics.HARNESS_METRICS) + ", anls:<threshold>")
    if name == "numeric" and arg:
        parse_tolerance(arg)
    if name == "regex" and arg:
        re.compile(arg)
    if name == "anls" and arg:
        metrics.parse_threshold(arg)
    elif name in metrics.HARNESS_METRICS and arg:
        raise ValueError(f"scorer {name!r} takes no argument (not {spec!r})")
    return spec


def score_output(spec: str, output: str, expected: Any,
                 options: Sequence[str] | None = None) -> Score:
    name, sep, arg = check_spec(spec).partition(":")
    if name == "json":
        return json_fields(output, expected)
    if name in metrics.HARNESS_METRICS:
        value = metrics.score(name, arg or None, output, expected)
        return Score(value, f"{name} {value:.4g}" + (f" ({metrics.final_answer(output)!r})"
                                                     if "relaxed" in name else ""))
    if isinstance(expected, list) and expected:  # several references: the best one
        return max((score_output(spec, output, e, options) for e in expected),
                   key=lambda s: s.score)
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
