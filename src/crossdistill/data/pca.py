"""Remove a fraction of the images' energy with PCA (CentralNet's weaker AV-MNIST images).

"Energy" is the variance around the training mean image: ``sum_i ||x_i - mean||^2`` over
the training images, i.e. the sum of the principal variances. :class:`PcaEnergyRemover` is
fitted on the training images only (eigenvectors of their covariance) and keeps the
LEADING principal components holding ``1 - removed`` of that energy: every image becomes
``mean + sum_j c_j (u_j . (x - mean)) u_j`` over the leading components ``u_1, u_2, ...``
with ``c_j = 1`` for the components that fit whole into the kept share and ``c_k`` in
``(0, 1]`` for the last one, scaled so the kept share is exactly ``1 - removed`` of the
training energy. The trailing components, holding exactly ``removed`` of the training
energy, are gone (on other images the removed share is close to it; it is measured and
logged as :attr:`removed_fraction` on the training images). ``removed = 0`` keeps the
images as they are.
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
        self.scale: np.ndarray | None = None  # [k] c_j
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
        target = (1.0 - self.removed) * variances.sum()
        cumulative = np.cumsum(variances)
        k = int(np.searchsorted(cumulative, target) + 1)  # first k with cumulative >= target
        k = min(k, len(variances))
        before = cumulative[k - 2] if k > 1 else 0.0
        scale = np.ones(k)
        if variances[k - 1] > 0:
            scale[-1] = np.sqrt(max(target - before, 0.0) / variances[k - 1])
        self.basis, self.scale = vectors[:, :k].T, scale
        kept = self._project(centred)
        self.removed_fraction = float(1.0 - (kept**2).sum() / max((centred**2).sum(), 1e-12))
        return self

    def _project(self, centred: np.ndarray) -> np.ndarray:
        return ((centred @ self.basis.T) * self.scale) @ self.basis

    def transform(self, images: np.ndarray) -> np.ndarray:
        """float32 images of the same shape with the trailing energy removed."""
        if self.removed == 0.0:
            return images.astype(np.float32)
        if self.basis is None:
            raise RuntimeError("PcaEnergyRemover.transform before fit")
        flat = images.reshape(len(images), -1).astype(np.float64)
        kept = self.mean + self._project(flat - self.mean)
        return kept.reshape(images.shape).astype(np.float32)
