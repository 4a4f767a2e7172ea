"""An LLM judge (`judge`) and the judgements it stores (`judged`), docs/judges.md."""
