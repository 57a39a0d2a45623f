"""``crossdistill-diagnose run_dir=<distill run>``: MFH Algorithm 1 on a trained pair.

Scores every channel of the teacher's input (``layer=null``) or of a teacher layer
(``layer=<module path inside the teacher encoder>``) by how much permuting it across
samples moves the teacher's logits away from the student's, and writes the ranking
(:mod:`crossdistill.diagnosis`). Only Hydra is imported before the command line is parsed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig

from crossdistill.utils.config import CONFIG_SOURCE, register_resolvers

if TYPE_CHECKING:
    import pandas as pd

register_resolvers()


def diagnose(cfg: DictConfig) -> pd.DataFrame:
    """Run Algorithm 1 on ``cfg.run_dir`` (see :func:`crossdistill.diagnosis.diagnose`)."""
    from crossdistill.diagnosis import diagnose as run_diagnosis

    return run_diagnosis(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_SOURCE, config_name="diagnose")
def main(cfg: DictConfig) -> None:
    diagnose(cfg)


if __name__ == "__main__":
    main()
