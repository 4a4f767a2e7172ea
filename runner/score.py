"""Alias of runner.results.score (scoring; same as `python -m runner.results score`)."""

from runner._alias import alias

alias(__name__, "runner.results.score")
