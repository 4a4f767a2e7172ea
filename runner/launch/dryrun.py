"""A sweep's dry run as one table: per point what it would ask of the engine and the store
(items, its largest item, the max_model_len that holds it, errors, engine starts) and a time
range derived from rates, not measured."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table

# docs/gpu.md's derived rates for Pixtral-12B on one A100 80 GB (docs/evaluations.md uses the
# same): not measured by this runner.
PREFILL_TOK_S, DECODE_TOK_S = 5_000, 5_100


def span(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else \
        f"{s:.0f} s"


def cannot_take(p: dict[str, Any]) -> str:
    """What a point's model cannot take as its config asks ('' when it can): items it would
    store as errors (each scores 0), a largest item over max_model_len, a max_model_len over
    what the model itself takes (vLLM refuses the engine)."""
    mml, own = p["max_model_len"], p.get("model_len")
    why = ([f"{p['errors']:,} item{'s' * (p['errors'] != 1)} stored as errors, scored 0 "
            "(the plan above says why)"] if p["errors"] else []) + \
        ([f"its largest item needs {p['needs_len']:,} > max_model_len {mml:,} (an answer "
          "may be cut short)"]
         if mml is not None and p["needs_len"] > mml else []) + \
        ([f"max_model_len {mml:,} is over the {own:,} the model takes"]
         if own is not None and mml is not None and mml > own else [])
    return "; ".join(why)


def needs_table(rows: list[dict[str, Any]], points: list[str]) -> Table:
    """One line per planned point (`points`: what varies, as the sweep table names it).
    Engine starts: 1 for the first point of each engine group (the grouped launcher runs a
    group's points one after another), 0 for the rest and for a point that asks a server or
    a hosted model's API. Time: from prefill alone (every answer
    one token) to every answer running to its max_tokens."""
    t = Table(title="dry run · what each point needs", title_justify="left",
              caption="rows: a benchmark's rows (the whole split, its first rows, or a seeded "
              "subset); img, prompt: the largest item's images and prompt tokens; needs len: "
              "the largest prompt + its max_tokens; err: item errors it would store\n"
              f"derived time, not measured: prompt tokens / {PREFILL_TOK_S:,} per s "
              f"+ 0 to max_tokens x items / {DECODE_TOK_S:,} per s (docs/gpu.md's A100 80 GB "
              "rates), engine starts not included", caption_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for c in ("point", "rows", "items", "img", "prompt", "needs len", "err", "starts",
              "derived time"):
        t.add_column(c, justify="left" if c == "point" else "right", overflow="fold",
                     no_wrap=c == "point")
    seen: set[Any] = set()
    for r, point in zip(rows, points, strict=True):
        p = r["plan"]
        if (why := cannot_take(p)):
            t.caption += f"\n[red]{point or '-'} cannot take it as asked: {why}[/]"
        starts = int(r.get("engine") not in seen and not r.get("served"))
        seen.add(r.get("engine"))
        short = p["max_model_len"] is not None and p["needs_len"] > p["max_model_len"]
        need = f"{p['needs_len']:,}" + (f" [red]> {p['max_model_len']:,}[/]" if short else "")
        pre = p["prompt_tokens"] / PREFILL_TOK_S
        t.add_row(point or "-", p.get("selection") or "-", f"{p['items']:,}", str(p["max_images"]),
                  f"{p['max_prompt_tokens']:,}", need,
                  f"[red]{p['errors']:,}[/]" if p["errors"] else "0", str(starts),
                  f"{span(pre)} - {span(pre + p['max_new_tokens'] / DECODE_TOK_S)}")
    return t
