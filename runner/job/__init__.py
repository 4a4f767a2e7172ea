"""The job: one config run end to end, config -> plan -> engine -> store -> report.

Takes a composed config; gives a `Summary` and a run folder in the store. `recipe.Job` is the
recipe (prepare -> compute -> finish); `feed` drives the engine through the bounded `window`,
`sink` stores each outcome, `supervise` restarts a dead engine, `budget` is the error budget,
`retry` requeues error records, `signals` turns Ctrl-C/SIGTERM into a clean stop.
"""
