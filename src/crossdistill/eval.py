"""``crossdistill-eval run_dir=<run dir>``: test a trained run from its run dir alone.

Options: ``ckpt=auto|best|last|<path>``, ``stage=student|teacher``, ``split=test|val``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from crossdistill.utils.config import CONFIG_SOURCE, register_resolvers

log = logging.getLogger("crossdistill")
register_resolvers()


def evaluate(cfg: DictConfig) -> dict[str, float]:
    import pytorch_lightning as pl  # imported here: `--help` and bad options answer at once

    from crossdistill.run_dir import load_run
    from crossdistill.validation import validate_eval_config

    validate_eval_config(cfg)
    run = load_run(cfg.run_dir, cfg.ckpt, cfg.stage)
    trainer = pl.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    if cfg.split == "test":
        results = trainer.test(run.module, datamodule=run.datamodule)
    elif cfg.split == "val":
        results = trainer.validate(run.module, datamodule=run.datamodule)
    else:
        raise ValueError(f"split must be 'test' or 'val', got {cfg.split!r}")
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    out = Path(cfg.run_dir) / f"eval_{cfg.stage}_{cfg.split}.json"
    out.write_text(json.dumps({"checkpoint": str(run.checkpoint), **metrics}, indent=2))
    log.info("%s %s metrics (%s): %s", cfg.stage, cfg.split, run.checkpoint, json.dumps(metrics))
    log.info("written to %s", out)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_SOURCE, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
