"""Stage 2, plan: a composed config and a prompt set on disk -> a `Plan` of items.

Takes `cfg.prompts` (the set, its format, image limits), `cfg.sampling` and the model's
tokenizer; gives every item its messages, images (hashed, guarded, normalized once), content
key, sampling and token counts, or the item's error. Reads files only; no model is loaded.
`load.load_plan` is the entry; `sources` reads the set formats, `images` the images,
`sampling` the per-request sampling, `tokens` the token plan, `cache` and `statcache` spare a
rerun the work on unchanged inputs.
"""
