"""Multiruns: Hydra's sweep points -> jobs on this node, on SLURM or on Ray, and one summary.

Takes Hydra's job overrides; gives each job its devices (`launchers`, used by
hydra_plugins/runner_launchers) and the sweep's table and runs.json (`sweep`, a callback).
"""
