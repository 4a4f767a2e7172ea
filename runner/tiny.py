"""Alias of runner.fixtures.tiny (the tiny Pixtral)."""

from runner._alias import alias

alias(__name__, "runner.fixtures.tiny")
