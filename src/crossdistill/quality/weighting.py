"""Quality-based adaptive weights (our C2KD interpretation).

:class:`QualityWeighter` turns per-sample qualities ``q [B]`` into weights ``w [B]`` with
batch mean 1, which go into ``LossInputs.sample_weights``; the composer then reduces the
distillation terms as ``sum_i w_i l_i / sum_i w_i``. Low-quality pairs teach less.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from crossdistill.losses.base import LossInputs
from crossdistill.quality.estimators import ESTIMATORS, QualityEstimator

__all__ = ["QualityWeighter", "WEIGHT_RULES"]

WEIGHT_RULES = ("none", "sigmoid", "softmax")
STATS = ("running", "batch")


class QualityWeighter(nn.Module):
    """Map qualities to per-sample weights.

    Normalisation: ``z = (q - mu) / sqrt(var + eps)``. With ``stats='running'`` (default)
    ``mu`` / ``var`` are running buffers updated in train mode as in BatchNorm,
    ``r <- (1 - momentum) r + momentum * batch_stat`` (unbiased batch variance; the first
    training batch initialises them, so quality scales far from 0 / 1 work at once), and
    frozen in eval mode. They are buffers, hence saved in checkpoints. The current batch
    is folded in *before* normalising. ``stats='batch'`` uses the batch statistics only.

    Rules:
        * ``'sigmoid'``: ``w = sigmoid(z / tau)``, then rescaled to batch mean 1
          (``rescale=True``).
        * ``'softmax'``: ``w = B * softmax(z / tau)`` over the batch (mean 1).
        * ``'none'``: ``w = 1`` (statistics are not tracked).

    Weights carry no gradient. ``min_weight`` floors ``w`` before the rescaling.

    Args:
        estimator: optional :class:`QualityEstimator` (or a name in ``ESTIMATORS``, built
            with defaults) used by :meth:`from_batch`.
        rule: one of ``WEIGHT_RULES``.
        tau: temperature (> 0); smaller = sharper.
        momentum: running-statistics momentum in (0, 1].
        stats: ``'running'`` or ``'batch'``.
        rescale: rescale sigmoid weights to batch mean 1.
        min_weight: floor of the weights before rescaling (0 = none).
        eps: added to the variance.
    """

    def __init__(
        self,
        estimator: QualityEstimator | str | None = None,
        rule: str = "sigmoid",
        tau: float = 1.0,
        momentum: float = 0.1,
        stats: str = "running",
        rescale: bool = True,
        min_weight: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if rule not in WEIGHT_RULES:
            raise ValueError(f"quality.rule must be one of {WEIGHT_RULES}, got {rule!r}")
        if stats not in STATS:
            raise ValueError(f"quality.stats must be one of {STATS}, got {stats!r}")
        if tau <= 0:
            raise ValueError(f"quality.tau must be > 0, got {tau}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"quality.momentum must be in (0, 1], got {momentum}")
        if min_weight < 0:
            raise ValueError(f"quality.min_weight must be >= 0, got {min_weight}")
        if isinstance(estimator, str):
            if estimator not in ESTIMATORS:
                raise ValueError(
                    f"quality.estimator must be one of {sorted(ESTIMATORS)} or an estimator "
                    f"object, got {estimator!r}"
                )
            estimator = ESTIMATORS[estimator]()
        if estimator is not None and not callable(estimator):
            raise TypeError(f"quality.estimator must be callable, got {estimator!r}")
        self.estimator = estimator
        self.rule = rule
        self.tau = float(tau)
        self.momentum = float(momentum)
        self.stats = stats
        self.rescale = rescale
        self.min_weight = float(min_weight)
        self.eps = eps
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_var", torch.ones(()))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    @property
    def requires(self) -> tuple[str, ...]:
        """``LossInputs`` fields the estimator reads (empty for ``rule='none'``)."""
        if self.rule == "none" or self.estimator is None:
            return ()
        return tuple(getattr(self.estimator, "requires", ()))

    @property
    def batch_keys(self) -> tuple[str, ...]:
        if self.rule == "none" or self.estimator is None:
            return ()
        return tuple(getattr(self.estimator, "batch_keys", ()))

    def forward(
        self, batch: Mapping[str, Any] | Tensor, inputs: LossInputs | None = None
    ) -> Tensor:
        """Weights ``[B]`` for a training step: ``quality(batch, inputs)`` runs the
        estimator (as the distillation module calls it); a tensor of qualities ``[B]``
        is weighted directly (:meth:`weights`)."""
        if isinstance(batch, Mapping):
            return self.from_batch(batch, inputs)
        return self.weights(batch)

    def from_batch(self, batch: Mapping[str, Any], inputs: LossInputs | None = None) -> Tensor:
        """Estimate the qualities with ``estimator`` and return the weights."""
        if self.rule == "none":
            ref = batch.get("label")
            if ref is None and inputs is not None:
                ref = inputs.labels
            if ref is None:
                raise ValueError("QualityWeighter(rule='none') needs batch['label'] or inputs")
            return torch.ones(len(ref), device=torch.as_tensor(ref).device)
        if self.estimator is None:
            raise ValueError(f"QualityWeighter(rule={self.rule!r}) has no estimator")
        return self.weights(self.estimator(batch, inputs))

    @torch.no_grad()
    def _update(self, q: Tensor) -> None:
        mean = q.mean()
        var = q.var(unbiased=True) if q.numel() > 1 else None
        if int(self.num_batches_tracked) == 0:
            self.running_mean.copy_(mean)
            if var is not None:
                self.running_var.copy_(var)
        else:
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean)
            if var is not None:
                self.running_var.mul_(1 - m).add_(m * var)
        self.num_batches_tracked.add_(1)

    def weights(self, quality: Tensor) -> Tensor:
        """Map qualities ``[B]`` to weights ``[B]`` (updates running stats in train mode)."""
        q = torch.as_tensor(quality).detach().reshape(-1).float()
        if self.rule == "none":
            return torch.ones_like(q)
        if q.numel() == 0:
            return q
        if not torch.isfinite(q).all():
            raise ValueError(f"qualities must be finite, got {q[~torch.isfinite(q)][:5].tolist()}")
        if self.stats == "batch":
            mu = q.mean()
            var = q.var(unbiased=True) if q.numel() > 1 else q.new_ones(())
        else:
            if self.training:
                self._update(q)
            mu = self.running_mean.to(q)
            var = self.running_var.to(q)
        z = (q - mu) / (var + self.eps).sqrt() / self.tau
        if self.rule == "softmax":
            w = torch.softmax(z, 0) * q.numel()
            if self.min_weight > 0:
                w = w.clamp_min(self.min_weight)
                w = w / w.mean()
            return w
        w = torch.sigmoid(z).clamp_min(self.min_weight)
        if self.rescale:
            w = w / w.mean().clamp_min(1e-12)
        return w

    def extra_repr(self) -> str:
        return (
            f"rule={self.rule!r}, tau={self.tau}, momentum={self.momentum}, "
            f"stats={self.stats!r}, rescale={self.rescale}, min_weight={self.min_weight}"
        )
