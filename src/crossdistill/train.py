"""``crossdistill-train``: train a teacher (or reuse one), then the student; test; report.

Examples::

    crossdistill-train experiment=mfh/exp1 seed=3 distill.kd.weight=0.5
    crossdistill-train -m experiment=mfh/exp1 data.overlap=0,10
    crossdistill-train resume=outputs/mfh_exp1/runs/<run>   # finish a killed run

Only Hydra is imported before the command line is parsed, so ``--help``, a typo or a bad
option answer at once; the pipeline (torch, Lightning, ...) is imported to run a job.
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from crossdistill.utils.config import CONFIG_SOURCE, register_resolvers

register_resolvers()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job on a composed config (see :func:`crossdistill.pipeline.train`)."""
    from crossdistill.pipeline import train as run_pipeline

    return run_pipeline(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_SOURCE, config_name="train")
def run_hydra_job(cfg: DictConfig) -> float | None:
    from crossdistill.pipeline import run_task

    return run_task(cfg)


def main() -> float | None:
    """The console script: ``resume=<run dir>`` becomes the run's own command line (or one
    error line naming the refused overrides), then Hydra runs the job."""
    from crossdistill.resume import resume_command_line
    from crossdistill.validation import ConfigError

    try:
        sys.argv[1:] = resume_command_line(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return run_hydra_job()


if __name__ == "__main__":
    main()
