"""Offline readers of stored runs: the CLI (`python -m runner.results`), the run loader and
resolver (`runs`), the index, scoring and the HTML report. Never imports vLLM or torch (a
ruff rule in this folder's ruff.toml enforces it)."""
