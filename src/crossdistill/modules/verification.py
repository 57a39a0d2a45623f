"""Speaker-verification evaluator: the val/test metrics of the face -> voice pipeline.

Eval labels of the face-voice data are speakers *disjoint* from the training classes, so
the classifier head cannot be evaluated; instead every eval utterance is embedded and the
split's trial list is scored (see :class:`VerificationEvaluator`). Plug it in with
``evaluator=verification`` (student) or ``teacher.evaluator`` (face teacher).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from crossdistill.data.degrade import add_noise_at_snr
from crossdistill.metrics.matching import matching_accuracy
from crossdistill.metrics.verification import compute_eer, compute_min_dcf
from crossdistill.modules.evaluators import Evaluator

log = logging.getLogger(__name__)

FIELDS = ("index", "label", "emb", "face", "noisy")


class EmbeddingCollector(Metric):
    """Per-sample eval outputs, concatenated across DDP ranks at ``compute()``.

    ``update(index [B], label [B], emb [B, D], face [B, Df], noisy [B, S, D])``; ``face``
    and ``noisy`` may have a zero-sized dimension when not measured.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in FIELDS:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, **values: Tensor) -> None:
        for name in FIELDS:
            getattr(self, name).append(values[name].detach())

    def compute(self) -> dict[str, Tensor]:
        if isinstance(self.index, list) and not self.index:
            return {}
        return {name: dim_zero_cat(getattr(self, name)).cpu() for name in FIELDS}


def snr_name(snr_db: float) -> str:
    """Metric suffix for an SNR: 10.0 -> 'snr10', -5.0 -> 'snr-5', 2.5 -> 'snr2.5'."""
    return f"snr{float(snr_db):g}"


class VerificationEvaluator(Evaluator):
    """Embeds every utterance of the eval split and scores its trial list.

    Logged per split (``val`` / ``test``):

    * ``<split>/eer``, ``<split>/min_dcf``: cosine scores of ``input_key`` embeddings on
      ``datamodule.trials(split)`` (minDCF with ``p_target``, ``c_miss``, ``c_fa``,
      normalised). The student embeds every ``student_input`` utterance alone, cut to its
      ``student_lengths`` (see :meth:`embed`), so an embedding never depends on the eval
      batch size, the batch neighbours or the DDP rank; the teacher
      (``input_key=teacher_input``) embeds the face paired with each utterance, so the
      teacher gets a face-verification EER on the same trials.
    * ``<split>/eer_snr<X>`` / ``min_dcf_snr<X>`` (splits in ``noise_splits``, speech only):
      the same trials with enrolment clean and the test utterance mixed with white noise
      at ``X`` dB SNR (``data.degrade.add_noise_at_snr`` over the true, unpadded length,
      seeded by ``(noise_seed, X, index)``: identical in every run).
    * ``<split>/match_1of<k>`` for ``k`` in ``matching_k`` (a DistillModule with a
      projection head or a term on ``teacher_embedding``): voice -> face matching of the
      student voice embeddings against the projected teacher face embeddings P(t) of the
      paired faces (``metrics.matching``; chance = 1/k).
    * ``<split>/id_acc``: closed-set identification among the split's speakers: each
      speaker is enrolled with the mean embedding of its first video; every utterance of
      its other videos is classified by the most similar enrolment (cosine).

    Embeddings are gathered across DDP ranks (torchmetrics ``cat`` states) and deduplicated
    by sample index (the first row of an index the DistributedSampler repeated to pad a
    rank), so all ranks compute the same numbers, equal to a single process's. If the pass
    saw only part of the split (``limit_val_batches``, ``fast_dev_run``), only trials whose
    two utterances were embedded are scored; with no usable trial the metric is NaN (a
    warning says so).
    """

    monitor_mode = "min"

    def __init__(
        self,
        datamodule: Any,
        input_key: str = "student_input",
        p_target: float = 0.01,
        c_miss: float = 1.0,
        c_fa: float = 1.0,
        noise_snr_db: Sequence[float] = (20.0, 10.0, 0.0),
        noise_splits: Sequence[str] = ("test",),
        noise_kind: str = "white",
        noise_seed: int = 0,
        matching_k: Sequence[int] = (2, 5),
        matching_repeats: int = 10,
        identification: bool = True,
    ) -> None:
        super().__init__()
        if not hasattr(datamodule, "trials") or not hasattr(datamodule, "eval_dataset"):
            raise TypeError(
                f"VerificationEvaluator needs a datamodule with trials(split) and "
                f"eval_dataset(split) (e.g. FaceVoiceDataModule), got {type(datamodule).__name__}"
            )
        self.datamodule = datamodule
        self.input_key = input_key
        self.p_target, self.c_miss, self.c_fa = float(p_target), float(c_miss), float(c_fa)
        self.noise_snr_db = [float(s) for s in (noise_snr_db or [])]
        self.noise_splits = tuple(noise_splits or ())
        self.noise_kind = noise_kind
        self.noise_seed = int(noise_seed)
        self.matching_k = [int(k) for k in (matching_k or [])]
        self.matching_repeats = int(matching_repeats)
        self.identification = identification
        self.collectors = nn.ModuleDict({s: EmbeddingCollector() for s in ("val", "test")})
        self._trial_index: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self.last: dict[str, dict[str, float]] = {}  # last computed metrics per split

    # ------------------------------------------------------------------ per batch
    def embed(
        self, module: pl.LightningModule, batch: dict[str, Tensor], x: Tensor | None = None
    ) -> Tensor:
        """``input_key`` embedding of ``batch`` (or of ``x`` in its place).

        Padded speech (``student_input`` with ``student_lengths``) is embedded one
        utterance at a time, cut to its true length: the ECAPA convolutions would otherwise
        see the padding after an utterance shorter than its batch neighbours, and its
        embedding would depend on the batch it was put in (and so on the eval batch size
        and the number of DDP ranks). Fixed-size inputs (faces) are embedded as a batch.
        """
        x = batch[self.input_key] if x is None else x
        lengths = batch.get("student_lengths") if self.input_key == "student_input" else None
        if lengths is None:
            return module.embed(x)
        return torch.cat(
            [module.embed(x[j : j + 1, : int(n)]) for j, n in enumerate(lengths.tolist())]
        )

    def _noisy(self, x: Tensor, batch: dict[str, Tensor], snr_db: float) -> Tensor:
        """``x`` with each utterance noised over its true length (padding stays zero)."""
        lengths = batch.get("student_lengths")
        out = x.clone()
        code = int(round(snr_db * 100)) + 100_000
        for j, idx in enumerate(batch["index"].tolist()):
            n = int(lengths[j]) if lengths is not None else x.shape[-1]
            rng = np.random.default_rng([self.noise_seed, code, int(idx)])
            out[j, :n] = add_noise_at_snr(x[j, :n].cpu(), snr_db, rng, self.noise_kind).to(x)
        return out

    @staticmethod
    def _teacher_face(module: pl.LightningModule, batch: dict[str, Tensor]) -> Tensor | None:
        """P(t) of the paired faces; None without a teacher, or when nothing maps the teacher
        into the student's space (no projection head and no term on teacher_embedding)."""
        teacher = getattr(module, "teacher_encoder", None)
        if teacher is None or "teacher_input" not in batch:
            return None
        projection = getattr(module, "projection", None)
        aligned = "teacher_embedding" in getattr(getattr(module, "loss", None),
                                                 "required_fields", ())
        if projection is None and not aligned:
            return None
        face = teacher(batch["teacher_input"])
        return projection(face) if projection is not None else face

    @torch.no_grad()
    def step(self, module: pl.LightningModule, batch: dict[str, Tensor], split: str) -> None:
        emb = self.embed(module, batch).float()
        bs = emb.shape[0]
        noisy = emb.new_zeros(bs, 0, emb.shape[1])
        if self.input_key == "student_input" and split in self.noise_splits and self.noise_snr_db:
            x = batch[self.input_key]
            noisy = torch.stack(
                [
                    self.embed(module, batch, self._noisy(x, batch, s)).float()
                    for s in self.noise_snr_db
                ],
                dim=1,
            )
        face = emb.new_zeros(bs, 0)
        if self.matching_k and self.input_key == "student_input":
            projected = self._teacher_face(module, batch)
            if projected is not None and projected.shape[1] == emb.shape[1]:
                face = projected.float()
        self.collectors[split].update(
            index=batch["index"].long(),
            label=batch["label"].long(),
            emb=emb,
            face=face,
            noisy=noisy,
        )

    # ------------------------------------------------------------------ per epoch
    def _trials(self, split: str) -> tuple[Tensor, Tensor, Tensor]:
        if split not in self._trial_index:
            ds = self.datamodule.eval_dataset(split)
            trials = self.datamodule.trials(split)
            pos = ds.path_to_index
            enroll = torch.tensor([pos[t.enroll] for t in trials], dtype=torch.long)
            test = torch.tensor([pos[t.test] for t in trials], dtype=torch.long)
            labels = torch.tensor([t.label for t in trials], dtype=torch.long)
            self._trial_index[split] = (enroll, test, labels)
        return self._trial_index[split]

    def _verification(
        self, enroll_emb: Tensor, test_emb: Tensor, trials, seen: Tensor, split: str, suffix: str
    ) -> dict[str, float]:
        enroll, test, labels = trials
        ok = seen[enroll] & seen[test]
        nan = {f"{split}/eer{suffix}": math.nan, f"{split}/min_dcf{suffix}": math.nan}
        if not ok.any() or labels[ok].min() == labels[ok].max():
            log.warning(
                "%s: no scorable target + non-target trials among the %d embedded "
                "utterances; %s/eer%s is NaN",
                split,
                int(seen.sum()),
                split,
                suffix,
            )
            return nan
        if not ok.all() and not suffix:
            log.warning(
                "%s: scoring %d of %d trials (only part of the split was embedded)",
                split,
                int(ok.sum()),
                ok.numel(),
            )
        e = F.normalize(enroll_emb[enroll[ok]].double(), dim=-1)
        t = F.normalize(test_emb[test[ok]].double(), dim=-1)
        scores = (e * t).sum(-1)
        eer, _ = compute_eer(scores, labels[ok])
        dcf, _ = compute_min_dcf(scores, labels[ok], self.p_target, self.c_miss, self.c_fa)
        return {f"{split}/eer{suffix}": eer, f"{split}/min_dcf{suffix}": dcf}

    def _identification(self, emb: Tensor, seen: Tensor, split: str) -> dict[str, float]:
        ds = self.datamodule.eval_dataset(split)
        items = ds.items
        first_video: dict[str, str] = {}
        for u in items:
            first_video[u.identity] = min(u.video, first_video.get(u.identity, u.video))
        ids = sorted(first_video)
        col = {i: c for c, i in enumerate(ids)}
        enrol_sum = emb.new_zeros(len(ids), emb.shape[1])
        enrol_n = emb.new_zeros(len(ids))
        queries, truth = [], []
        for j, u in enumerate(items):
            if not seen[j]:
                continue
            if u.video == first_video[u.identity]:
                enrol_sum[col[u.identity]] += F.normalize(emb[j], dim=-1)
                enrol_n[col[u.identity]] += 1
            else:
                queries.append(j)
                truth.append(col[u.identity])
        usable = enrol_n > 0
        if usable.sum() < 2 or not queries:
            return {}
        keep = [k for k, c in enumerate(truth) if usable[c]]
        if not keep:
            return {}
        q = F.normalize(emb[[queries[k] for k in keep]], dim=-1)
        protos = F.normalize(enrol_sum, dim=-1)
        sims = q @ protos.T
        sims[:, ~usable] = -math.inf
        pred = sims.argmax(1)
        acc = (pred == torch.tensor([truth[k] for k in keep])).float().mean().item()
        return {f"{split}/id_acc": acc}

    def compute(self, split: str) -> dict[str, float]:
        """Gather this split's embeddings (all ranks) and compute its metrics."""
        data = self.collectors[split].compute()
        self.collectors[split].reset()
        if not data:
            return {}
        n = len(self.datamodule.eval_dataset(split))
        index = data["index"]
        if index.numel() and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"{split}: eval batch index out of range [0, {n})")
        # DistributedSampler pads the last ranks with repeats of the first samples: keep
        # the first row of every index (the same on all ranks: they gather the same rows
        # in the same order), so duplicates never decide a metric
        order = torch.argsort(index, stable=True)
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = index[order[1:]] != index[order[:-1]]
        keep = order[first]
        index = index[keep]
        seen = torch.zeros(n, dtype=torch.bool)
        seen[index] = True

        def table(values: Tensor) -> Tensor:
            out = values.new_zeros(n, *values.shape[1:])
            out[index] = values[keep]
            return out

        emb = table(data["emb"].double())
        trials = self._trials(split)
        metrics = self._verification(emb, emb, trials, seen, split, "")
        noisy = data["noisy"]
        if noisy.shape[1] == len(self.noise_snr_db) and noisy.shape[1] > 0:
            noisy = table(noisy.double())
            for s, snr in enumerate(self.noise_snr_db):
                metrics.update(
                    self._verification(emb, noisy[:, s], trials, seen, split, f"_{snr_name(snr)}")
                )
        labels = table(data["label"])
        if data["face"].shape[1] > 0:
            face = table(data["face"].double())
            n_ids = int(torch.unique(labels[seen]).numel())
            for k in self.matching_k:
                if k > n_ids:
                    log.warning(
                        "%s: 1-of-%d matching needs %d speakers, the split has %d; skipped",
                        split,
                        k,
                        k,
                        n_ids,
                    )
                    continue
                metrics[f"{split}/match_1of{k}"] = matching_accuracy(
                    emb[seen],
                    labels[seen],
                    face[seen],
                    labels[seen],
                    k=k,
                    num_repeats=self.matching_repeats,
                    seed=self.noise_seed,
                )
        if self.identification:
            metrics.update(self._identification(emb, seen, split))
        return metrics

    def epoch_end(self, module: pl.LightningModule, split: str) -> None:
        metrics = self.compute(split)
        self.last[split] = metrics
        for name, value in metrics.items():
            module.log(name, float(value), prog_bar=name.endswith("/eer"), sync_dist=False)
