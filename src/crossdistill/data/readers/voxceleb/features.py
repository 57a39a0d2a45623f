"""Filter banks of every utterance of a split, computed once into a content-keyed cache.

What :class:`~.dataset.FaceVoiceDataset` serves with ``data.audio_input=features``: each
utterance's :meth:`~.dataset.FaceVoiceDataset.full_waveform` (the split's degradation
applied, seeded per index, so fixed across epochs), optionally mixed with the evaluator's
noise (seeded per (seed, SNR, index), see :func:`crossdistill.data.degrade.noisy_utterances`),
turned into SpeechBrain filter banks; per utterance also the blind SNR estimate of that
waveform (``snr_db``) and whether it was degraded (``degraded``). The cache key hashes the
wav files' contents (or size + mtime), the utterance list in index order, the split, the
filter-bank, degradation and noise parameters (:mod:`crossdistill.data.audio_features`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill.data.audio_features import (
    FbankExtractor,
    FbankParams,
    RaggedFeatures,
    cached_ragged_features,
)
from crossdistill.data.degrade import estimate_snr_db, noisy_utterances
from crossdistill.data.readers.voxceleb.dataset import FaceVoiceDataset
from crossdistill.utils.fingerprint import fingerprint_items, fingerprint_paths


def wav_fingerprint(dataset: FaceVoiceDataset, mode: str = "content") -> str:
    """Fingerprint of the split's wav files (``content``: bytes; ``stat``: size + mtime)."""
    return fingerprint_paths([dataset.index.wav_root / p for p in dataset.paths], mode)


def _degradation_payload(dataset: FaceVoiceDataset) -> dict[str, Any] | None:
    degrader = dataset.degrader
    if degrader is None or not degrader.active(dataset.split) or degrader.cfg.speech.prob <= 0:
        return None
    return {"speech": asdict(degrader.cfg.speech), "seed": degrader.cfg.seed}


def utterance_features(
    dataset: FaceVoiceDataset,
    params: FbankParams,
    cache_dir: str | Path,
    wav_files: str,
    noise: Mapping[str, Any] | None = None,
) -> RaggedFeatures:
    """Cached filter banks of every utterance of ``dataset`` (row ``i`` = index ``i``);
    ``wav_files``: :func:`wav_fingerprint` of the split; ``noise``: ``{snr_db, seed, kind}``
    of an evaluator noise pass (eval splits), None for the inputs themselves."""
    if params.sample_rate != dataset.sample_rate:
        raise ValueError(f"audio_features.sample_rate={params.sample_rate} differs from the "
                         f"data's sample_rate={dataset.sample_rate}")  # fmt: skip
    payload = {
        "what": "voxceleb utterance filter banks",
        "fbank": asdict(params),
        "split": dataset.split,
        "train": dataset.train,
        "max_samples": -1 if dataset.train else dataset.max_samples,
        "resample": dataset.resample,
        "degradation": _degradation_payload(dataset),
        "noise": dict(noise) if noise else None,
        "utterances": fingerprint_items(dataset.paths),
        "wav_files": wav_files,
    }

    def compute() -> Iterator[tuple[np.ndarray, dict[str, float]]]:
        extractor = FbankExtractor(params)
        for i in range(len(dataset)):
            wave, snr = dataset.full_waveform(i)
            if noise:
                wave = noisy_utterances(wave[None], None, torch.tensor([i]),
                                        float(noise["snr_db"]), int(noise["seed"]),
                                        str(noise["kind"]))[0]  # fmt: skip
                yield extractor(wave), {}
            else:
                values = {"snr_db": estimate_snr_db(wave, dataset.sample_rate),
                          "degraded": float(snr is not None)}  # fmt: skip
                yield extractor(wave), values

    return cached_ragged_features(payload, len(dataset), compute, cache_dir)
