"""MFH Algorithm 1 on a trained pair, behind ``crossdistill-diagnose run_dir=<distill run>``.

Scores every channel of the teacher's input (``layer=null``) or of a teacher layer
(``layer=<module path inside the teacher encoder>``) by how much permuting it across
samples moves the teacher's logits away from the student's, and writes the ranking.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from crossdistill.analysis.algorithm1 import permutation_scores, top_channels
from crossdistill.modules import DistillModule
from crossdistill.run_dir import load_run

log = logging.getLogger("crossdistill")


def collect(module: DistillModule, loader, max_samples: int) -> tuple[Tensor, Tensor]:
    """Teacher inputs and student logits of up to ``max_samples`` samples."""
    xs, logits, n = [], [], 0
    with torch.no_grad():
        for batch in loader:
            xs.append(batch["teacher_input"])
            logits.append(module(batch["student_input"]))
            n += len(batch["label"])
            if n >= max_samples:
                break
    return torch.cat(xs)[:max_samples], torch.cat(logits)[:max_samples]


def layer_teacher_fn(
    module: DistillModule, x_a: Tensor, layer: str, chunk: int, shortcut: bool = True
):
    """Teacher features at ``layer`` for ``x_a``, and a function running the rest of the
    teacher on replaced features (a forward hook swaps the layer's output).

    When the encoder returns the layer's output tensor itself (e.g. the fusion teacher's
    ``fused``), the rest of the teacher is its classifier alone: with ``shortcut`` the
    replaced features go through the classifier only, the same logits without recomputing
    the encoder for every permutation.
    """
    try:
        target: nn.Module = module.teacher_encoder.get_submodule(layer)
    except AttributeError as err:
        names = [n for n, _ in module.teacher_encoder.named_modules() if n]
        raise KeyError(f"teacher encoder has no layer {layer!r}; layers: {names}") from err
    captured: list[Tensor] = []
    handle = target.register_forward_hook(lambda m, i, o: captured.append(o))
    is_output = True
    with torch.no_grad():
        for start in range(0, len(x_a), chunk):
            is_output &= module.teacher_encoder(x_a[start : start + chunk]) is captured[-1]
    handle.remove()
    features = torch.cat(captured).detach()

    def classifier_fn(replaced: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    module.teacher_classifier(replaced[start : start + chunk])
                    for start in range(0, len(replaced), chunk)
                ]
            )

    def teacher_fn(replaced: Tensor) -> Tensor:
        outs = []
        for start in range(0, len(x_a), chunk):
            part = replaced[start : start + chunk]
            h = target.register_forward_hook(lambda m, i, o, part=part: part)
            try:
                outs.append(module.teacher_logits(x_a[start : start + chunk]))
            finally:
                h.remove()
        return torch.cat(outs)

    if shortcut and is_output:
        log.info(
            "%s is the teacher encoder's output: permuted features go through the classifier only",
            layer,
        )
        return features, classifier_fn
    return features, teacher_fn


def diagnose(cfg: DictConfig) -> pd.DataFrame:
    run = load_run(cfg.run_dir, cfg.ckpt)
    module = run.module
    if not isinstance(module, DistillModule):
        raise ValueError(
            f"{cfg.run_dir} is not a distillation run (its distill terms use no teacher); "
            "Algorithm 1 needs a teacher/student pair"
        )
    loaders = {
        "train": run.datamodule.train_dataloader,
        "val": run.datamodule.val_dataloader,
        "test": run.datamodule.test_dataloader,
    }
    if cfg.split not in loaders:
        raise ValueError(f"split must be one of {sorted(loaders)}, got {cfg.split!r}")
    x_a, s_logits = collect(module, loaders[cfg.split](), cfg.max_samples)
    if cfg.layer:
        features, teacher_fn = layer_teacher_fn(module, x_a, cfg.layer, cfg.chunk)
    else:
        features, teacher_fn = x_a, module.teacher_logits
    scores = permutation_scores(
        teacher_fn,
        features,
        s_logits,
        cfg.n_repeats,
        torch.Generator().manual_seed(cfg.seed),
        event_dims=features.ndim - 2,
    )
    ranking = top_channels(scores, scores.shape[-1])
    table = pd.DataFrame({"channel": ranking.numpy(), "score": scores[ranking].numpy()})
    table.index.name = "rank"
    out = Path(cfg.run_dir) / f"alg1_{cfg.layer or 'input'}_{cfg.split}.csv"
    table.to_csv(out)
    top = table.channel.head(cfg.top_k).tolist()
    (out.with_suffix(".json")).write_text(json.dumps({"top_k": top, "layer": cfg.layer}))
    log.info("top-%d modality-general channels of %s: %s", cfg.top_k, cfg.layer or "input", top)
    log.info("scores written to %s", out)
    return table
