"""Contrastive representation distillation (CRD) with its memory banks."""

from __future__ import annotations

import logging
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from crossdistill.losses import functional
from crossdistill.losses.base import DataSizes, LossInputs, LossTerm, register_loss

log = logging.getLogger(__name__)

TEACHER_FIELDS = ("teacher_raw_embedding", "teacher_embedding")
OBJECTIVES = ("nce", "softmax")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_rows(x: Tensor) -> Tensor:
    """``x`` ``[b, ...]`` of every rank concatenated in rank order (uneven ``b`` allowed);
    ``x`` itself outside distributed training. No gradient."""
    if not _distributed():
        return x
    world = dist.get_world_size()
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])


@register_loss("crd")
class CRDTerm(LossTerm):
    """CRD (Tian, Krishnan, Isola; ICLR 2020): NCE between student and teacher embeddings
    against memory banks of both.

    Heads ``g_s, g_t`` (trainable linear maps to ``feat_dim``, then L2-normalised) give
    ``v_s = g_s(s_i)`` and ``v_t = g_t(t_i)``. Banks ``M_s, M_t`` ``[N, feat_dim]`` hold one
    row per training sample (``indices``, row = ``batch["index"]``). With the positive
    ``j_0 = i`` and ``K`` negatives ``j_1..j_K`` drawn uniformly from the other samples:

    ``h(v, m) = exp(<v, m> / nce_t) / Z``, ``c = K / N`` (K times the noise density 1/N),
    ``l_i = -log(h_0 / (h_0 + c + eps)) - sum_k log(c / (h_k + c + eps))``

    once for ``v_s`` against ``M_t`` and once for ``v_t`` against ``M_s``; the sum is the
    per-sample loss (its batch mean is the paper's loss). ``Z`` (one per side) is the
    paper's normalisation constant, ``mean(exp(<v, m> / nce_t)) * N`` over the first batch,
    then kept fixed (a buffer, saved in checkpoints). After the loss, each bank row of the
    batch moves to the new embedding: ``M[i] <- normalise(momentum M[i] + (1 - momentum)
    v_i)``; banks start uniform in ``[-stdv, stdv]``, ``stdv = 1 / sqrt(feat_dim / 3)``.

    Defaults are the paper's: ``feat_dim = 128``, ``num_negatives = 16384``, ``nce_t =
    0.07``, ``momentum = 0.5``, ``eps = 1e-7``, the teacher's embedding before any
    projection (``teacher_field = teacher_raw_embedding``); their loss weight is 0.8 next
    to CE 1 (``conf/distill/crd.yaml``). ``objective = softmax`` replaces NCE by the
    cross-entropy of the positive among the ``K + 1`` scores (InfoNCE, as in CMC): no
    ``Z`` to estimate, for small training sets where ``K`` is close to ``N``. NCE is the
    default because it is what the paper trains and reports.

    Differences from the paper: ``K`` is capped at ``N - 1`` (logged) and negatives never
    equal the positive's index (the authors' sampler may draw it); ``N`` and the embedding
    dims are bound when the module is built (:meth:`bind_data_sizes`), never configured.
    Negatives come from torch's default generator on the bank's device, so an exact
    resume (RNG states restored) draws the same ones.

    Under DDP the indices and new embeddings of all ranks are gathered (``all_gather``)
    before the bank update and ``Z`` is averaged over the ranks' first batches, so every
    rank keeps the same banks (DDP's buffer broadcast then changes nothing).

    Degenerate inputs: scores are ``<v, m> / nce_t`` of unit vectors (at most 1 / nce_t),
    a zero embedding maps to the head's bias; gradients are bounded by ``(K + 1) / nce_t``
    times the head weights. A batch without ``index`` or with an index outside ``[0, N)``
    fails with the offending values.
    """

    requires = ("student_embedding", "teacher_raw_embedding", "indices")
    needs_data_sizes = True

    def __init__(
        self,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        nce_t: float = 0.07,
        momentum: float = 0.5,
        teacher_field: str = "teacher_raw_embedding",
        objective: str = "nce",
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        if teacher_field not in TEACHER_FIELDS:
            raise ValueError(
                f"crd.teacher_field must be one of {TEACHER_FIELDS}, got {teacher_field!r}"
            )
        if objective not in OBJECTIVES:
            raise ValueError(f"crd.objective must be one of {OBJECTIVES}, got {objective!r}")
        if feat_dim < 1 or num_negatives < 1:
            raise ValueError(
                f"crd.feat_dim and crd.num_negatives must be >= 1, got {feat_dim}, {num_negatives}"
            )
        if not nce_t > 0 or not 0 <= momentum < 1:
            raise ValueError(
                f"crd needs nce_t > 0 and 0 <= momentum < 1, got nce_t={nce_t}, momentum={momentum}"
            )
        self.feat_dim = int(feat_dim)
        self.num_negatives = int(num_negatives)
        self.nce_t = float(nce_t)
        self.momentum = float(momentum)
        self.teacher_field = teacher_field
        self.requires = ("student_embedding", teacher_field, "indices")
        self.objective = objective
        self.eps = float(eps)
        self.num_samples = 0  # N, set by bind_data_sizes
        self.k = 0  # negatives per sample actually drawn: min(num_negatives, N - 1)
        #: the heads (and the buffers memory_student / memory_teacher, z_student / z_teacher)
        #: are made by bind_data_sizes
        self.embed_student: nn.Linear | None = None
        self.embed_teacher: nn.Linear | None = None

    # -- building --------------------------------------------------------------------
    def bind_data_sizes(self, sizes: DataSizes) -> None:
        n = int(sizes.num_train_samples)
        if n < 2:
            raise ValueError(f"crd needs at least 2 training samples, got N={n}")
        dims = {}
        for name in ("student_embedding", self.teacher_field):
            if name not in sizes.embedding_dims:
                raise ValueError(
                    f"crd reads {name!r} but its size is unknown (known: "
                    f"{sorted(sizes.embedding_dims)})"
                )
            dims[name] = int(sizes.embedding_dims[name])
        if self.num_samples:
            if n != self.num_samples:
                raise ValueError(f"crd is bound to N={self.num_samples}, got N={n} again")
            return
        self.num_samples = n
        self.k = min(self.num_negatives, n - 1)
        if self.k < self.num_negatives:
            log.warning(
                "crd: num_negatives=%d capped at N - 1 = %d (the training set has %d samples)",
                self.num_negatives, self.k, n,
            )  # fmt: skip
        self.embed_student = nn.Linear(dims["student_embedding"], self.feat_dim)
        self.embed_teacher = nn.Linear(dims[self.teacher_field], self.feat_dim)
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        for side in ("student", "teacher"):
            bank = torch.rand(n, self.feat_dim).mul_(2 * stdv).add_(-stdv)
            self.register_buffer(f"memory_{side}", bank)
            self.register_buffer(f"z_{side}", torch.tensor(-1.0))  # < 0: not estimated yet

    # -- one step --------------------------------------------------------------------
    def check_indices(self, indices: Tensor | None, batch: int) -> Tensor:
        """The batch's training-set indices as int64 ``[B]``; clear errors otherwise."""
        hint = (
            "every datamodule must give batch['index'] = the sample's position in its "
            "training dataset (docs/CONVENTIONS.md)"
        )
        if indices is None:
            raise ValueError(f"crd needs the sample indices, but the batch has none: {hint}")
        if indices.is_floating_point() or indices.shape != (batch,):
            raise ValueError(
                f"crd: indices must be integers of shape ({batch},), got {indices.dtype} "
                f"{tuple(indices.shape)}: {hint}"
            )
        bad = (indices < 0) | (indices >= self.num_samples)
        if bad.any():
            raise ValueError(
                f"crd: sample indices {indices[bad].tolist()[:10]} are outside [0, "
                f"{self.num_samples}) (N = training samples the banks were built for): {hint}"
            )
        return indices.long()

    def contrast_indices(self, indices: Tensor) -> Tensor:
        """``[B, K + 1]``: column 0 the positive (``indices``), then ``K`` negatives drawn
        uniformly from the other ``N - 1`` samples (torch's default generator)."""
        draws = torch.randint(
            0, self.num_samples - 1, (indices.shape[0], self.k), device=indices.device
        )
        negatives = draws + (draws >= indices[:, None]).long()  # skip the positive
        return torch.cat([indices[:, None], negatives], 1)

    def scores(self, embedding: Tensor, bank: Tensor, contrast: Tensor) -> Tensor:
        """``<v_i, M[contrast[i, j]]> / nce_t`` ``[B, K + 1]``.

        When the ``K + 1`` drawn rows are a large share of the bank (``N <= 16 (K + 1)``,
        e.g. every small training set), all ``B x N`` scores come from one matrix product
        and the drawn ones are picked from it: the same values up to float rounding, 50x
        faster on CPU than gathering a ``[B, K + 1, feat_dim]`` copy of the bank (measured,
        N = 2,400, K = 2,399). Large banks gather only the drawn rows.
        """
        if bank.shape[0] <= 16 * contrast.shape[1]:
            # a copy: the bank is updated in place after the loss, before backward
            return (embedding @ bank.T.clone()).gather(1, contrast) / self.nce_t
        return torch.einsum("bkf,bf->bk", bank[contrast], embedding) / self.nce_t

    def side_loss(self, scores: Tensor, side: str) -> Tensor:
        """Per-sample NCE (or softmax) loss of one side's scores ``[B, K + 1]``."""
        if self.objective == "softmax":
            return -scores.log_softmax(-1)[:, 0]
        z = getattr(self, f"z_{side}")
        if z.item() < 0:  # the paper: Z estimated on the first batch, then fixed
            estimate = scores.detach().exp().mean() * self.num_samples
            if _distributed():
                dist.all_reduce(estimate)
                estimate /= dist.get_world_size()
            z.fill_(estimate.item())
        log_h = scores - z.log()
        log_c = math.log(self.k / self.num_samples)
        log_c_eps = math.log(self.k / self.num_samples + self.eps)
        floor = torch.full_like(log_h, log_c_eps)
        log_positive = log_h[:, 0] - torch.logaddexp(log_h[:, 0], floor[:, 0])
        log_negatives = log_c - torch.logaddexp(log_h[:, 1:], floor[:, 1:])
        return -(log_positive + log_negatives.sum(1))

    @torch.no_grad()
    def update_banks(self, indices: Tensor, v_student: Tensor, v_teacher: Tensor) -> None:
        """``M[i] <- normalise(momentum M[i] + (1 - momentum) v_i)`` on both banks, with
        the rows of every rank under DDP."""
        indices = all_gather_rows(indices)
        for bank, v in ((self.memory_student, v_student), (self.memory_teacher, v_teacher)):
            v = all_gather_rows(v.to(bank.dtype))
            moved = bank[indices] * self.momentum + v * (1 - self.momentum)
            bank.index_copy_(0, indices, F.normalize(moved, dim=-1))

    def forward(self, inputs: LossInputs) -> Tensor:
        if not self.num_samples:
            raise RuntimeError(
                "crd has no heads or memory banks yet: bind_data_sizes() must run first "
                "(DistillModule does it when it is built)"
            )
        student = inputs.student_embedding
        teacher = getattr(inputs, self.teacher_field).detach()
        indices = self.check_indices(inputs.indices, student.shape[0])
        v_student = functional.normalize(self.embed_student(student))
        v_teacher = functional.normalize(self.embed_teacher(teacher))
        contrast = self.contrast_indices(indices)
        loss = self.side_loss(
            self.scores(v_student, self.memory_teacher, contrast), "student"
        ) + self.side_loss(self.scores(v_teacher, self.memory_student, contrast), "teacher")
        if self.training:
            self.update_banks(indices, v_student.detach(), v_teacher.detach())
        return loss
