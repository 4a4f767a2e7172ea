"""Offline readers of stored runs, one room per concern: `runs/` (load, resolve, index, export),
`scoring/`, `judging/`, `card/` (card and compare), `report/` (HTML) and `cli/`
(`python -m runner.results`). Never imports vLLM or torch (a ruff rule in this folder's
ruff.toml enforces it)."""
