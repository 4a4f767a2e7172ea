"""Alias of runner.fixtures.tiny_hf (the tiny W4A16 twin)."""

from runner._alias import alias

alias(__name__, "runner.fixtures.tiny_hf")
