"""Stage 4, store: outcomes in, run folders out, addressed by the hash of their config.

Takes the planned items' outcomes (records) and the run's config; gives `<root>/<hash>/`
with config.yaml, overrides.yaml, manifest.json and results*.jsonl, written atomically under
one lock per run. `rundir` is the folder and its hash, `record` the one record schema and its
readers, `manifest` the manifest's shape.
"""
