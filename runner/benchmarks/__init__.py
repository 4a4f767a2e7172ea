"""Benchmarks as prompt sets: `python -m runner.benchmarks import NAME --source SRC --out DIR`
turns a benchmark's rows into a set whose items are the requests Mistral's evaluation harness
sends (harness.yaml: prompts, sampling, metrics; docs/evaluations.md)."""
