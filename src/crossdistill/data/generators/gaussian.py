"""Synthetic Gaussian data of the Modality Focusing Hypothesis (Xue et al., ICLR 2023).

Label ``y = 1[z . a > 0]`` for decisive latent features ``z ~ N(0, I)``; each modality is
``N(0, 1)`` noise in which some columns are overwritten by columns of ``z``. The three
layouts below follow the authors' code exactly (see ``docs/mfh.md`` for the mapping).
Data are drawn with numpy's legacy ``RandomState`` in the same order as the authors'
code, so a given seed gives the same samples. That order differs between their scripts:
``z`` first, then ``x_b`` before ``x_a`` in experiments 1-2 (``gauss/main.py``) but ``x_a``
before ``x_b`` in Table 2 (``gauss/main_modify_gamma.py``); each layout carries its order
in :attr:`ModalityLayout.draw_order`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HYPERPLANE_DIM = 500  # the authors draw a 500-dim hyperplane and use its first entries
STUDENT_FIRST = ("x_b", "x_a")  # experiments 1-2 of the authors' code
TEACHER_FIRST = ("x_a", "x_b")  # Table 2 of the authors' code


@dataclass(frozen=True)
class ModalityLayout:
    """Which columns of ``z`` each modality holds.

    ``teacher_cols[i]`` / ``student_cols[i]``: column of ``x`` that receives ``z[:, src]``,
    given as ``(dst_column, z_column)`` pairs.
    ``draw_order``: which modality's noise :func:`sample` draws first after ``z``:
    :data:`STUDENT_FIRST` (``x_b`` then ``x_a``, the authors' experiments 1-2) or
    :data:`TEACHER_FIRST` (``x_a`` then ``x_b``, the authors' Table 2). It only changes
    which samples a seed gives, not their distribution.
    """

    z_dim: int
    teacher_dim: int
    student_dim: int
    teacher_cols: tuple[tuple[int, int], ...]
    student_cols: tuple[tuple[int, int], ...]
    draw_order: tuple[str, str] = STUDENT_FIRST

    def __post_init__(self) -> None:
        if tuple(self.draw_order) not in (STUDENT_FIRST, TEACHER_FIRST):
            raise ValueError(
                f"draw_order must be {STUDENT_FIRST} or {TEACHER_FIRST}, got {self.draw_order!r}"
            )
        for name, cols, dim in (
            ("teacher", self.teacher_cols, self.teacher_dim),
            ("student", self.student_cols, self.student_dim),
        ):
            for dst, src in cols:
                if not (0 <= dst < dim):
                    raise ValueError(
                        f"{name} modality has {dim} dims, cannot hold a decisive feature in "
                        f"column {dst}; raise {name}_dim or lower the number of decisive dims"
                    )
                if not (0 <= src < self.z_dim):
                    raise ValueError(f"z has {self.z_dim} dims; column {src} does not exist")

    @property
    def shared_z(self) -> set[int]:
        return {s for _, s in self.teacher_cols} & {s for _, s in self.student_cols}

    @property
    def gamma(self) -> float:
        """Share of the decisive features visible in both modalities."""
        union = {s for _, s in self.teacher_cols} | {s for _, s in self.student_cols}
        return len(self.shared_z) / max(len(union), 1)

    @property
    def shared_teacher_columns(self) -> list[int]:
        """Teacher input columns that carry a feature the student also sees."""
        shared = self.shared_z
        return sorted(dst for dst, src in self.teacher_cols if src in shared)


def gamma_layout(overlap: int, teacher_dim: int = 25, student_dim: int = 50) -> ModalityLayout:
    """Experiment 1 (paper Fig. 2): 20 decisive dims, 10 per modality, ``overlap`` shared.

    ``x_b[:, 0:10] = z[:, 0:10]``; ``x_a[:, 10-o:20-o] = z[:, 10-o:20-o]`` (same columns).
    """
    if not 0 <= overlap <= 10:
        raise ValueError(f"experiment 1 needs 0 <= overlap <= 10, got {overlap}")
    lo = 10 - overlap
    return ModalityLayout(
        z_dim=20,
        teacher_dim=teacher_dim,
        student_dim=student_dim,
        teacher_cols=tuple((c, c) for c in range(lo, lo + 10)),
        student_cols=tuple((c, c) for c in range(10)),
    )


def alpha_layout(teacher_only: int, teacher_dim: int = 50, student_dim: int = 50) -> ModalityLayout:
    """Experiment 2 (paper Fig. 3): z has 50 dims; x_b holds z[:, 0:10], x_a z[:, 0:10+k]."""
    if teacher_only < 0:
        raise ValueError(f"teacher_only must be >= 0, got {teacher_only}")
    return ModalityLayout(
        z_dim=50,
        teacher_dim=teacher_dim,
        student_dim=student_dim,
        teacher_cols=tuple((c, c) for c in range(10 + teacher_only)),
        student_cols=tuple((c, c) for c in range(10)),
    )


def modify_gamma_layout(
    shared: int,
    teacher_only: int = 10,
    teacher_dim: int = 50,
    student_dim: int = 50,
    draw_order: tuple[str, str] = TEACHER_FIRST,
) -> ModalityLayout:
    """Table 2: z has ``teacher_only + shared`` dims, all in x_a; x_b holds z[:, 0:shared].

    The authors' Table-2 script draws ``x_a`` before ``x_b`` (``draw_order``).
    """
    if shared < 1:
        raise ValueError(f"Table 2 needs at least one shared dim, got shared={shared}")
    return ModalityLayout(
        z_dim=teacher_only + shared,
        teacher_dim=teacher_dim,
        student_dim=student_dim,
        teacher_cols=tuple((c, c) for c in range(teacher_only + shared)),
        student_cols=tuple((c, c) for c in range(shared)),
        draw_order=draw_order,
    )


def draw_hyperplane(rng: np.random.RandomState, z_dim: int, kind: str = "gaussian") -> np.ndarray:
    """The separating hyperplane ``a``: N(0, I) (experiments 1-2) or all ones (Table 2)."""
    if kind == "gaussian":
        return rng.randn(HYPERPLANE_DIM)[:z_dim]
    if kind == "ones":
        return np.ones(z_dim)
    raise ValueError(f"hyperplane must be 'gaussian' or 'ones', got {kind!r}")


def sample(
    layout: ModalityLayout, n: int, a: np.ndarray, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` samples ``(x_a, x_b, y)`` in the authors' order.

    ``z`` first, then the two modalities' noise in ``layout.draw_order`` (``x_b, x_a`` for
    experiments 1-2, ``x_a, x_b`` for Table 2), each with its ``z`` columns written in.
    """
    z = rng.randn(n, layout.z_dim)
    y = (z @ a[: layout.z_dim] > 0).astype(np.int64)
    spec = {
        "x_a": (layout.teacher_dim, layout.teacher_cols),
        "x_b": (layout.student_dim, layout.student_cols),
    }
    x = {}
    for name in layout.draw_order:
        dim, cols = spec[name]
        x[name] = rng.randn(n, dim)
        for dst, src in cols:
            x[name][:, dst] = z[:, src]
    return x["x_a"].astype(np.float32), x["x_b"].astype(np.float32), y
