"""Train (or reuse) only the teacher of a face_voice experiment and print its metrics.

The teacher stage of ``crossdistill-train`` without the student: the built-in data are
generated (or reused), the teacher is trained as the pipeline trains it (on the face-only
identity pool with ``data.teacher_pool=true``) or reused from the teacher cache, and its
face-verification metrics on the paired val / test speakers are printed with the data's
generation time and realised shared information. A later ``crossdistill-train`` run with
the same data / teacher / seed reuses this teacher.

    python scripts/face_teacher.py                                  # timm_face, defaults
    python scripts/face_teacher.py teacher=oracle data.teacher_input=oracle_factors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import open_dict

from crossdistill import builders
from crossdistill.pipeline import obtain_teacher
from crossdistill.utils.config import compose_config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides (default experiment: face_voice/no_kd with its teacher)",
    )
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if not any(o.startswith("experiment=") for o in overrides):
        overrides.insert(0, "experiment=face_voice/no_kd")
    cfg = compose_config("train", overrides)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    with open_dict(cfg):
        cfg.paths.output_dir = str(Path(cfg.paths.log_dir) / "face_teacher" / stamp)
    pl.seed_everything(cfg.seed, workers=True)
    t0 = time.time()
    datamodule = builders.build_datamodule(cfg)
    data_seconds = time.time() - t0
    t0 = time.time()
    _, metrics = obtain_teacher(cfg, datamodule, Path(cfg.paths.output_dir))
    result = {
        "teacher": metrics,
        "teacher_seconds": round(time.time() - t0, 1),
        "data_seconds_this_run": round(data_seconds, 1),
    }
    if getattr(datamodule, "generator_cfg", None) is not None:  # built-in data
        root = datamodule.input_paths()[0]
        manifest = json.loads((root / "manifest.json").read_text())
        result["data_generation_seconds"] = manifest.get("seconds")
        result["shared_information"] = manifest.get("shared_information")
        result["data_dir"] = str(root)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
