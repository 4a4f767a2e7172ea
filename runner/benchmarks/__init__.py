"""Benchmarks as prompt sets: a benchmark's export -> a prompt set folder under prompts/.

Takes a dataset export (for MMMU: JSONL or parquet rows); gives a set.yaml with its images,
references and scorer, which the plan reads like any other set.
"""
