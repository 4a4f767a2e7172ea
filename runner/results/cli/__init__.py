"""`python -m runner.results`: the commands (`main`, `evaluate`) and their terminal tables
(`tables`)."""
