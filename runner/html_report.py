"""Alias of runner.results.html (the HTML report; same as `python -m runner.results report`)."""

from runner._alias import alias

alias(__name__, "runner.results.html")
