"""Remove a share of the images' energy with PCA (CentralNet's weaker AV-MNIST images).

"Energy" is the variance around the training mean image: ``sum_i ||x_i - mean||^2`` over
the training images, i.e. the sum of the principal variances. :class:`PcaEnergyRemover` is
fitted on the training images only (eigenvectors of their covariance) and keeps the ``k``
LEADING principal components, ``k >= 1`` chosen so that the share of the training energy
they hold is as close as possible to ``1 - removed``: every image becomes
``mean + U_k U_k^T (x - mean)`` (an orthogonal projection, so the removed part ``x - x'``
and the kept part are orthogonal). The trailing components, holding the share
:attr:`removed_fraction` of the training energy (the requested ``removed`` up to the share
of one component; logged), are gone. ``removed = 0`` keeps the images as they are.
"""

from __future__ import annotations

import numpy as np


class PcaEnergyRemover:
    """Fit on training images ``[N, ...]``; :meth:`transform` any images of that shape."""

    def __init__(self, removed: float) -> None:
        if not 0.0 <= removed < 1.0:
            raise ValueError(f"data.image_energy_removed must be in [0, 1), got {removed}")
        self.removed = float(removed)
        self.mean: np.ndarray | None = None
        self.basis: np.ndarray | None = None  # [k, D] leading components
        self.removed_fraction = 0.0

    @property
    def num_components(self) -> int:
        return 0 if self.basis is None else len(self.basis)

    def fit(self, images: np.ndarray) -> PcaEnergyRemover:
        if self.removed == 0.0:
            return self
        flat = images.reshape(len(images), -1).astype(np.float64)
        self.mean = flat.mean(0)
        centred = flat - self.mean
        variances, vectors = np.linalg.eigh(centred.T @ centred / len(flat))
        order = np.argsort(variances)[::-1]
        variances, vectors = np.clip(variances[order], 0.0, None), vectors[:, order]
        kept_share = np.cumsum(variances) / max(variances.sum(), 1e-12)
        k = int(np.argmin(np.abs(kept_share - (1.0 - self.removed)))) + 1
        self.basis = vectors[:, :k].T
        self.removed_fraction = float(1.0 - kept_share[k - 1])
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """float32 images of the same shape, projected on the kept components."""
        if self.removed == 0.0:
            return images.astype(np.float32)
        if self.basis is None or self.mean is None:
            raise RuntimeError("PcaEnergyRemover.transform before fit")
        flat = images.reshape(len(images), -1).astype(np.float64)
        kept = self.mean + ((flat - self.mean) @ self.basis.T) @ self.basis
        return kept.reshape(images.shape).astype(np.float32)
