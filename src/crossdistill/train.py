"""``crossdistill-train``: train a teacher (or reuse one), then the student; test; report.

Examples::

    crossdistill-train experiment=mfh/exp1 seed=3 distill.kd.weight=0.5
    crossdistill-train -m experiment=mfh/exp1 data.overlap=0,10

Only Hydra is imported before the command line is parsed, so ``--help``, a typo or a bad
option answer at once; the pipeline (torch, Lightning, ...) is imported to run a job.
"""

from __future__ import annotations

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
def main(cfg: DictConfig) -> float | None:
    from crossdistill.pipeline import run_task

    return run_task(cfg)


if __name__ == "__main__":
    main()
