"""Scores of a run: one output against its references (`scorers`, `metrics`), a run's scores
(`score`), intervals and paired tests (`stats`)."""
