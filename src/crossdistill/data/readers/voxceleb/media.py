"""Reading one file of the layout: a waveform (resampled if allowed) or a face image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as audio_functional
from PIL import Image
from torch import Tensor

from crossdistill.data.readers.voxceleb.bad_files import BadFileError


def check_rate(path: Path, sr: int, sample_rate: int, resample: bool) -> None:
    if not resample:
        raise ValueError(f"{path}: sample rate {sr} Hz differs from the configured "
                         f"{sample_rate} Hz; set resample=true to resample it "
                         "(torchaudio.functional.resample) or convert the data")


def image_problem(path: Path) -> str | None:
    try:
        if path.stat().st_size == 0:
            return "empty image file"
        with Image.open(path) as im:
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad images
        return f"corrupt or unreadable image ({type(e).__name__}: {e})"
    return None


def load_waveform(path: str | Path, sample_rate: int = 16000, *, resample: bool = True,
                  start: int = 0, num_samples: int = -1) -> Tensor:
    """Mono float32 waveform [T] at ``sample_rate``; ``start``/``num_samples`` are in
    samples at ``sample_rate`` (-1 = to the end). Unreadable/empty files raise
    :class:`BadFileError` naming the file; another rate is resampled or refused."""
    try:
        info = sf.info(str(path))
        sr = int(info.samplerate)
        s0 = int(start * sr / sample_rate)
        n = -1 if num_samples < 0 else math.ceil(num_samples * sr / sample_rate)
        data, _ = sf.read(str(path), start=s0, frames=n, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise BadFileError(f"corrupt or unreadable WAV: {path} ({type(e).__name__}: {e})") from e
    if data.shape[0] == 0:
        raise BadFileError(f"empty WAV (0 samples): {path}")
    wave = torch.from_numpy(data.mean(axis=1) if data.shape[1] > 1 else data[:, 0])
    if sr != sample_rate:
        check_rate(Path(path), sr, sample_rate, resample)
        wave = audio_functional.resample(wave, sr, sample_rate)
        if num_samples >= 0:
            wave = wave[:num_samples]
    return wave.contiguous()


def load_face(path: str | Path, image_size: int | None = None) -> Tensor:
    """RGB float tensor [3, H, W] in [0, 1], resized to ``image_size`` x ``image_size``."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if image_size and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except Exception as e:  # noqa: BLE001
        raise BadFileError(f"corrupt or unreadable image: {path} ({type(e).__name__}: {e})") from e
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)

