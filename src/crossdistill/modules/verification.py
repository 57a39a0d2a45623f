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
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from crossdistill.data.datamodules.verification import TrialIndex, VerificationData
from crossdistill.metrics.identification import closed_set_identification
from crossdistill.metrics.matching import matching_accuracy
from crossdistill.metrics.trial_scores import write_trial_scores
from crossdistill.metrics.verification import indexed_cosine_scores, score_trials
from crossdistill.modules.evaluators import Evaluator
from crossdistill.modules.supervised import SupervisedModule

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

    The data come from a :class:`~crossdistill.data.datamodules.verification.VerificationData`
    datamodule, the scores from :mod:`crossdistill.metrics`; this class only embeds and
    collects. Logged per split (``val`` / ``test``):

    * ``<split>/eer``, ``<split>/min_dcf``: cosine scores of ``input_key`` embeddings on
      ``datamodule.trial_index(split)`` (minDCF with ``p_target``, ``c_miss``, ``c_fa``,
      normalised). The student embeds every ``student_input`` utterance alone, cut to its
      ``student_lengths`` (see :meth:`embed`), so an embedding never depends on the eval
      batch size, the batch neighbours or the DDP rank; the teacher
      (``input_key=teacher_input``) embeds the face paired with each utterance, so the
      teacher gets a face-verification EER on the same trials.
    * ``<split>/eer_snr<X>`` / ``min_dcf_snr<X>`` (splits in ``noise_splits``, speech only):
      the same trials with enrolment clean and the test utterance mixed with white noise
      at ``X`` dB SNR (``datamodule.noisy_eval_input``: noise over the true, unpadded
      length, seeded by ``(noise_seed, X, index)``: identical in every run).
    * ``<split>/match_1of<k>`` for ``k`` in ``matching_k`` (when
      ``module.teacher_embedding_for_matching`` gives the paired faces in the student's
      space, e.g. P(t) of a DistillModule with a projection head): voice -> face matching
      (``metrics.matching``; chance = 1/k).
    * ``<split>/id_acc``: closed-set identification among the split's speakers
      (``metrics.identification``).

    With ``scores_dir`` set, the trial scores of every split in ``scores_splits`` (clean
    and noisy passes, labels, both speakers) are written to ``<scores_dir>/<split>.npz``
    (:mod:`crossdistill.metrics.trial_scores`; rank 0 only), the input of the speaker
    bootstrap of the tables (docs/tables.md).

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
        datamodule: VerificationData,
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
        scores_dir: str | None = None,
        scores_splits: Sequence[str] = ("test",),
    ) -> None:
        super().__init__()
        if not isinstance(datamodule, VerificationData):
            raise TypeError(
                "VerificationEvaluator needs a VerificationData datamodule (trial lists, e.g. "
                f"FaceVoiceDataModule), got {type(datamodule).__name__}"
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
        self.scores_dir = Path(scores_dir) if scores_dir else None
        self.scores_splits = tuple(scores_splits or ())
        self.collectors = nn.ModuleDict({s: EmbeddingCollector() for s in ("val", "test")})
        self._trial_index: dict[str, TrialIndex] = {}
        self.last: dict[str, dict[str, float]] = {}  # last computed metrics per split

    # ------------------------------------------------------------------ per batch
    def embed(
        self, module: SupervisedModule, batch: dict[str, Tensor], x: Tensor | None = None
    ) -> Tensor:
        """``input_key`` embedding of ``batch`` (or of ``x`` in its place).

        Padded speech (``student_input`` with ``student_lengths``) is embedded cut to its
        true length, the utterances of one length together (no padding at all): the ECAPA
        convolutions would otherwise see the padding after an utterance shorter than its
        batch neighbours, and its embedding would depend on the batch it was put in (and
        so on the eval batch size and the number of DDP ranks). Cached filter banks come
        in length order (see ``FaceVoiceDataModule.eval_sampler``), so most utterances share
        a call. Fixed-size inputs (faces) are embedded as a batch.
        """
        x = batch[self.input_key] if x is None else x
        lengths = batch.get("student_lengths") if self.input_key == "student_input" else None
        if lengths is None:
            return module.embed(x)
        lengths = lengths.to(x.device)
        out: Tensor | None = None
        for n in torch.unique(lengths).tolist():
            rows = torch.nonzero(lengths == n).flatten()
            emb = module.embed(x[rows, : int(n)])
            if out is None:
                out = emb.new_zeros(x.shape[0], *emb.shape[1:])
            out[rows] = emb
        return out

    @torch.no_grad()
    def step(self, module: SupervisedModule, batch: dict[str, Tensor], split: str) -> None:
        emb = self.embed(module, batch).float()
        bs = emb.shape[0]
        noisy = emb.new_zeros(bs, 0, emb.shape[1])
        if self.input_key == "student_input" and split in self.noise_splits and self.noise_snr_db:
            noisy = torch.stack(
                [
                    self.embed(module, batch, self._noisy_input(batch, s, split)).float()
                    for s in self.noise_snr_db
                ],
                dim=1,
            )
        face = emb.new_zeros(bs, 0)
        if self.matching_k and self.input_key == "student_input":
            projected = module.teacher_embedding_for_matching(batch)
            if projected is not None and projected.shape[1] == emb.shape[1]:
                face = projected.float()
        self.collectors[split].update(
            index=batch["index"].long(),
            label=batch["label"].long(),
            emb=emb,
            face=face,
            noisy=noisy,
        )

    def _noisy_input(self, batch: dict[str, Tensor], snr_db: float, split: str) -> Tensor:
        return self.datamodule.noisy_eval_input(
            batch, snr_db, self.noise_seed, self.noise_kind, split=split
        )

    # ------------------------------------------------------------------ per epoch
    def _trials(self, split: str) -> TrialIndex:
        if split not in self._trial_index:
            self._trial_index[split] = self.datamodule.trial_index(split)
        return self._trial_index[split]

    def _verification(
        self, enroll_emb: Tensor, test_emb: Tensor, seen: Tensor, split: str, suffix: str
    ) -> dict[str, float]:
        trials = self._trials(split)
        errors = score_trials(
            enroll_emb, test_emb, trials.enroll, trials.test, trials.label, seen,
            p_target=self.p_target, c_miss=self.c_miss, c_fa=self.c_fa,
        )  # fmt: skip
        if math.isnan(errors.eer):
            log.warning(
                "%s: no scorable target + non-target trials among the %d embedded "
                "utterances; %s/eer%s is NaN",
                split,
                int(seen.sum()),
                split,
                suffix,
            )
        elif errors.num_scored < errors.num_trials and not suffix:
            log.warning(
                "%s: scoring %d of %d trials (only part of the split was embedded)",
                split,
                errors.num_scored,
                errors.num_trials,
            )
        return {f"{split}/eer{suffix}": errors.eer, f"{split}/min_dcf{suffix}": errors.min_dcf}

    def _identification(self, emb: Tensor, seen: Tensor, split: str) -> dict[str, float]:
        utterances = self.datamodule.eval_utterances(split)
        acc = closed_set_identification(
            emb, seen, [u.identity for u in utterances], [u.video for u in utterances]
        )
        return {} if acc is None else {f"{split}/id_acc": acc}

    def compute(self, split: str) -> dict[str, float]:
        """Gather this split's embeddings (all ranks) and compute its metrics."""
        data = self.collectors[split].compute()
        self.collectors[split].reset()
        if not data:
            return {}
        n = self.datamodule.eval_size(split)
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
        metrics = self._verification(emb, emb, seen, split, "")
        noisy = data["noisy"]
        if noisy.shape[1] == len(self.noise_snr_db) and noisy.shape[1] > 0:
            noisy = table(noisy.double())
            for s, snr in enumerate(self.noise_snr_db):
                metrics.update(
                    self._verification(emb, noisy[:, s], seen, split, f"_{snr_name(snr)}")
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
        if self.scores_dir is not None and split in self.scores_splits:
            measured = noisy.shape[1] == len(self.noise_snr_db) and noisy.shape[1] > 0
            self.save_scores(split, emb, noisy if measured else None, seen)
        return metrics

    def save_scores(self, split: str, emb: Tensor, noisy: Tensor | None, seen: Tensor) -> None:
        """Write the scores of the trials :meth:`compute` scored (both utterances embedded)
        to ``<scores_dir>/<split>.npz``, the clean pass and each noisy pass, on rank 0."""
        if pl.utilities.rank_zero_only.rank != 0:
            return
        trials = self._trials(split)
        ok = seen[trials.enroll] & seen[trials.test]
        enroll, test = trials.enroll[ok], trials.test[ok]
        passes = {"": indexed_cosine_scores(emb, emb, enroll, test)}
        for s, snr in enumerate(self.noise_snr_db if noisy is not None else []):
            passes[snr_name(snr)] = indexed_cosine_scores(emb, noisy[:, s], enroll, test)
        identity = [u.identity for u in self.datamodule.eval_utterances(split)]
        path = write_trial_scores(
            self.scores_dir / f"{split}.npz",
            trial=torch.nonzero(ok).flatten().numpy(),
            enroll=enroll.numpy(),
            test=test.numpy(),
            label=trials.label[ok].numpy(),
            enroll_identity=[identity[i] for i in enroll.tolist()],
            test_identity=[identity[i] for i in test.tolist()],
            scores={name: values.numpy() for name, values in passes.items()},
            p_target=self.p_target,
            c_miss=self.c_miss,
            c_fa=self.c_fa,
        )
        log.info("%s trial scores (%d trials) written to %s", split, int(ok.sum()), path)

    def epoch_end(self, module: SupervisedModule, split: str) -> None:
        metrics = self.compute(split)
        self.last[split] = metrics
        for name, value in metrics.items():
            module.log(name, float(value), prog_bar=name.endswith("/eer"), sync_dist=False)
