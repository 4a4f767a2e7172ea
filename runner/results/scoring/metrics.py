"""The metrics of Mistral's evaluation harness (github.com/mistralai/mistral-evals,
eval/metrics.py at 70eecd8), by its names, written here to score exactly as it does:

  explicit_prompt_relaxed_correctness     the answer after the last "answer:", relaxed match
  anywhere_in_answer_relaxed_correctness  the same; without an "answer:", the reference
                                          anywhere in the output (generous, by design)
  anls | anls:<t>                         1 - normalized Levenshtein distance to the nearest
                                          reference; 0 below the threshold t (harness: 0)
  vqa_match                               min(1, references equal to the output / 3)

Each takes one reference or a list (the harness's rule for lists: the best reference for the
relaxed metrics and ANLS, a count of equal references for VQA match). The harness's quirks
are kept on purpose (docs/evaluations.md, "Metrics"); tests/data/harness_metrics.yaml pins
each one against the line of the harness that decides it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

HARNESS_METRICS = ("explicit_prompt_relaxed_correctness",
                   "anywhere_in_answer_relaxed_correctness", "anls", "vqa_match")
TOLERANCE = 0.05  # relaxed correctness: within 5 % of the reference (ChartQA's rule)


def refs(expected: object) -> list[str]:
    """The references as strings (the harness would fail on a non-string one)."""
    if isinstance(expected, (list, tuple)):
        return [str(x) for x in expected]
    return [str(expected)]


def unquote(s: str) -> str:
    """One pair of matching wrapping quotes off ('"x"' -> 'x'; a lone '"' -> '')."""
    return s[1:-1] if s[:1] in "\"'" and s[:1] and s.endswith(s[0]) else s


def strip_end(s: str) -> str:
    """Trailing ASCII punctuation and whitespace off, stopping at a '%'."""
    end = len(s)
    while end and (s[end - 1] in string.punctuation or s[end - 1].isspace()) \
            and s[end - 1] != "%":
        end -= 1
    return s[:end]


# --- VQA match ------------------------------------------------------------------------------


def vqa_match(output: str, expected: object) -> float:
    """Case and spaces count: only wrapping quotes are ignored (harness lines 44-53)."""
    out = unquote(output)
    return min(1.0, sum(unquote(r) == out for r in refs(expected)) / 3)


# --- ANLS -----------------------------------------------------------------------------------


def levenshtein(a: str, b: str) -> int:
    if len(a) > len(b):
        a, b = b, a
    row = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        prev, row[0] = row[0], j
        for i, ca in enumerate(a, 1):
            cur = row[i]
            row[i] = prev if ca == cb else 1 + min(prev, cur, row[i - 1])
            prev = cur
    return row[-1]


def _anls_norm(s: str) -> str:
    return strip_end(" ".join(s.strip().lower().split()))


def anls(output: str, expected: object, threshold: float = 0.0) -> float:
    """1 - the smallest normalized distance over the references; 0 when that similarity is
    below `threshold` (the harness compares `1 - d < t`, so a similarity equal to t stays)."""
    out = _anls_norm(output)
    best = float("inf")
    for r in refs(expected):
        r = _anls_norm(r)
        length = max(len(r), len(out))
        best = min(best, 0.0 if length == 0 else float(levenshtein(r, out)) / float(length))
    return 0.0 if 1 - best < threshold else 1 - best


def parse_threshold(arg: str) -> float:
    t = float(arg)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"anls threshold {arg!r} is not between 0 and 1")
    return t


# --- relaxed correctness ----------------------------------------------------------------------


def _prep(text: str) -> str:
    """Text with a digit: trailing punctuation, then every ',' and '$' off; text without one:
    only wrapping quotes off (so 'Yes.' stays 'Yes.')."""
    if any(c.isdigit() for c in text):
        return strip_end(text).replace(",", "").replace("$", "")
    return unquote(text)


def _number(text: str) -> tuple[float | None, bool]:
    """Python's float() of the text without trailing '%'s, and whether it had one."""
    text = text.strip()
    try:
        return float(text.rstrip("%")), text.endswith("%")
    except ValueError:
        return None, False


def _close(p: float, t: float) -> bool:
    return abs(p - t) / max(abs(t), 1e-10) <= TOLERANCE


def relaxed(prediction: str, expected: object) -> float:
    """The best reference: numbers within 5 % (a percent also tried as a fraction, one side at
    a time), a one-letter reference against the prediction's first character, else text equal
    ignoring case. An empty list of references scores 0 (the harness raises)."""
    pred = _prep(prediction)
    p, p_pct = _number(pred)
    best = 0.0
    for ref in refs(expected):
        ref = _prep(ref)
        t, t_pct = _number(ref)
        if p is not None and t is not None:
            ok = _close(p, t) or ((p_pct or t_pct) and (
                _close(p / 100 if p_pct else p, t) or _close(p, t / 100 if t_pct else t)))
        elif ref.isalpha() and len(ref) == 1 and pred:
            ok = pred[0].lower() == ref.lower()
        else:
            ok = pred.lower() == ref.lower()
        best = max(best, float(bool(ok)))
    return best


_MARKDOWN_COLON = re.compile(r"([aA]nswer)\**:\**")
_MARKDOWN = re.compile(r"[*_\[\]()]")


def final_answer(generation: str) -> str:
    """The first non-empty line after the last "answer:" (any case; '**' around the colon
    dropped), without * _ [ ] ( ); '' when there is none. The position is found in the
    lowercased text and used in the original (as the harness does)."""
    text = _MARKDOWN_COLON.sub(r"\1:", generation)
    at = text.lower().rfind("answer:")
    if at < 0:
        return ""
    line = next((x.strip() for x in text[at + len("answer:"):].split("\n") if x.strip()), "")
    return _MARKDOWN.sub("", line)


def explicit_prompt(output: str, expected: object) -> float:
    answer = final_answer(output)
    return relaxed(answer, expected) if answer else 0.0


def _in_text(ref: str, output: str, every: Sequence[str]) -> bool | None:
    """The fallback for one reference: a number (as Python prints it, with or without
    thousands commas) inside the output; for text, the harness's phrases around any
    reference, lowercased, inside the output as it is. None: go on to the next reference."""
    try:
        number: float | int = float(ref)
        if int(number) == number:
            number = int(number)
        if format(number, ",") in output or str(number) in output:
            return True
        return None
    except OverflowError:  # int(inf): the harness stops with this error; here, no match
        return None
    except ValueError:  # text, or int(nan)
        phrases = [p.lower() for r in every
                   for p in (f"is {r}", f"was {r}", f" {r}.", f"are {r}", f"\n\n{r}")]
        return True if any(p in output for p in phrases) else None


def anywhere_in_answer(output: str, expected: object) -> float:
    rs = refs(expected)
    answer = final_answer(output)
    if answer:
        return relaxed(answer, rs)
    return 1.0 if any(_in_text(r, output, rs) for r in rs) else 0.0


def score(name: str, arg: str | None, output: str, expected: object) -> float:
    if name == "vqa_match":
        return vqa_match(output, expected)
    if name == "anls":
        return anls(output, expected, parse_threshold(arg) if arg else 0.0)
    if name == "explicit_prompt_relaxed_correctness":
        return explicit_prompt(output, expected)
    return anywhere_in_answer(output, expected)
