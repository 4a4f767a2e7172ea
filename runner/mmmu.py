"""Alias of runner.fixtures.mmmu (MMMU-format exports)."""

from runner._alias import alias

alias(__name__, "runner.fixtures.mmmu")
