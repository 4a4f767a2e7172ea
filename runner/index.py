"""Alias of runner.results.index (the run index)."""

from runner._alias import alias

alias(__name__, "runner.results.index")
