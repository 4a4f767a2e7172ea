"""The error budget, `prompts.max_error_rate` (docs/errors.md): a run whose items fail too
often stops instead of spending the GPU hours.

- Plan time: the errors known before any item is sent to the engine (the plan's item errors
  and the error records kept from earlier invocations) over the planned items. Over the
  budget, nothing is written, and an engine starting beside the plan is stopped.
- Run time: the items the engine finished in this invocation (an output or an error; the
  plan's own errors were judged before it started), once MIN_DONE of them are done. Over the
  budget, the run stops: status `failed`, exit 3, what finished stays stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runner.errors import OverBudget, UserError
from runner.kinds import by_kind, kind_of, kinds_text

if TYPE_CHECKING:
    from runner.plan.load import Item
    from runner.store.record import Record

KEY = "prompts.max_error_rate"
MIN_DONE = 50  # fewer items say too little about the rate


def rate_of(value: Any) -> float | None:
    """The configured budget, checked: null (none) or a fraction in [0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise UserError(f"{KEY} must be a fraction of the items between 0 and 1 (e.g. 0.05) "
                        f"or null for no budget, not {value!r}.")
    return float(value)


def _what(errors: list[tuple[str, str]], of: int, where: str) -> str:
    ids = ", ".join(i for i, _ in errors[:3])
    return (f"{len(errors)} of {of} items {where} are errors ({len(errors) / of:.1%}: "
            f"{kinds_text(by_kind(k for _, k in errors))}; e.g. ids {ids})")


def check_plan(rate: float | None, items: list[Item], stored: Mapping[str, Record],
               todo: list[Item]) -> None:
    """Stop before any item is sent to the engine when the errors known now (the error
    records kept in `stored` and the item errors of `todo`) are over the budget, among the
    planned `items`."""
    if rate is None or not items:
        return
    keys = {it.key for it in items}
    errs = [(str(r["id"]), kind_of(r) or "other") for k, r in stored.items()
            if k in keys and r.get("status") == "error"]
    errs += [(it.id, it.error_kind or "other") for it in todo if it.error]
    if len(errs) / len(items) <= rate:
        return
    raise OverBudget(f"{KEY}={rate:g} is exceeded at plan time: "
                     f"{_what(errs, len(items), 'planned')}; no item was sent to the engine: "
                     f"fix those items or raise {KEY}.")


class Budget:
    """Watches the engine's outcomes in this invocation; `done` raises OverBudget once at
    least MIN_DONE are done and the error rate is over the budget."""

    def __init__(self, rate: float | None, where: str):
        self.rate, self.where = rate, where
        self.done_n = 0
        self.errors: list[tuple[str, str]] = []

    def done(self, item_id: str, kind: str | None) -> None:
        self.done_n += 1
        if kind is not None:
            self.errors.append((item_id, kind))
        if self.rate is None or self.done_n < MIN_DONE:
            return
        if len(self.errors) / self.done_n > self.rate:
            raise OverBudget(f"{KEY}={self.rate:g} is exceeded: "
                             f"{_what(self.errors, self.done_n, 'the engine finished')}; the "
                             f"run stopped and what finished is stored in {self.where}: fix "
                             "the cause, then rerun with retry_errors=true to retry them.")
