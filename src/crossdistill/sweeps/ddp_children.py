"""Lightning's DDP child processes inside a Hydra multirun: re-run this job, not the sweep.

Lightning's ``ddp`` strategy (``start_method='popen'``) starts ranks 1..N-1 by re-running
the command line (``_hydra_subprocess_cmd``: ``sys.argv`` plus ``hydra.run.dir=<run.dir>``).
Inside ``-m`` that command is the whole sweep again: every child runs all jobs into a second,
stray sweep dir, and ``hydra.run.dir`` is the unused single-run pattern, not the job's dir.
:func:`job_child_command` builds the command of *this job* instead: no ``-m``, the job's own
overrides, ``hydra.mode=RUN``, the job's output dir as ``hydra.run.dir``.
:func:`children_run_this_job` installs it for one job and afterwards clears the
process-group and rendezvous variables the job left, so the next job starts its own ranks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd, to_absolute_path

# Hydra's options naming the config (kept for the child; everything else is re-derived)
CONFIG_OPTIONS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
# set by Lightning's launcher in the parent; left over, the next job would not start its ranks
RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def config_options(argv: list[str]) -> list[str]:
    """The ``--config-path/--config-name/--config-dir`` options of a command line."""
    kept, index = [], 0
    while index < len(argv):
        arg = argv[index]
        if arg in CONFIG_OPTIONS and index + 1 < len(argv):
            kept += [arg, argv[index + 1]]
            index += 2
            continue
        if arg.split("=", 1)[0] in CONFIG_OPTIONS and "=" in arg:
            kept.append(arg)
        index += 1
    return kept


def script_command() -> list[str]:
    """How this program was started: ``python <script>`` or ``python -m <module>``."""
    import __main__

    if getattr(__main__, "__spec__", None) is None:
        return [sys.executable, to_absolute_path(sys.argv[0])]
    return [sys.executable, "-m", __main__.__spec__.name]


def job_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command and cwd of DDP rank ``local_rank`` of the current multirun job."""
    hydra_cfg = HydraConfig.get()
    command = script_command() + config_options(sys.argv[1:])
    command += list(hydra_cfg.overrides.hydra) + list(hydra_cfg.overrides.task)
    command += [
        "hydra.mode=RUN",
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        f"hydra.job.name=train_ddp_process_{local_rank}",
        "hydra.output_subdir=null",  # the job's .hydra/ is rank 0's
    ]
    return command, get_original_cwd()


@contextmanager
def children_run_this_job() -> Iterator[None]:
    """For one multirun job: Lightning's DDP children run :func:`job_child_command`; after
    the job, its process group is destroyed and the rendezvous variables restored."""
    from lightning_fabric.strategies.launchers import subprocess_script as fabric_launcher
    from pytorch_lightning.strategies.launchers import subprocess_script as lightning_launcher

    modules = (fabric_launcher, lightning_launcher)
    originals = [module._hydra_subprocess_cmd for module in modules]
    saved_env = {name: os.environ.get(name) for name in RENDEZVOUS_VARIABLES}
    for module in modules:
        module._hydra_subprocess_cmd = job_child_command
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module._hydra_subprocess_cmd = original
        _destroy_process_group()
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _destroy_process_group() -> None:
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
