"""Alias of runner.fixtures.samples (the sample images)."""

from runner._alias import alias

alias(__name__, "runner.fixtures.samples")
