"""Multiruns that survive failing jobs and DDP jobs (see docs/scaling.md).

- :mod:`.status`: each multirun job's ``status.json`` and the sweep's ``summary.md/.csv``.
- :mod:`.ddp_children`: Lightning's DDP child processes re-run the job, not the sweep.
"""
