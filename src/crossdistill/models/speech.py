"""Speech encoder: SpeechBrain log-Mel filterbanks -> per-utterance mean normalisation ->
ECAPA-TDNN speaker embedding (as in SpeechBrain's VoxCeleb recipe); the filter banks are
computed from the waveform or come precomputed from the data (``input="features"``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from torch import Tensor, nn


def frame_mask(lengths: Tensor | None, batch: int, frames: int, device: torch.device) -> Tensor:
    """``[B, T']`` bool mask of valid frames from SpeechBrain relative lengths (1.0 = full)."""
    if lengths is None:
        return torch.ones(batch, frames, dtype=torch.bool, device=device)
    n_valid = (lengths.to(device).float() * frames).round().clamp(min=1, max=frames)
    return torch.arange(frames, device=device)[None, :] < n_valid[:, None]


INPUTS = ("waveform", "features")
FBANK_KEYS = ("sample_rate", "n_mels", "n_fft", "win_length", "hop_length")


class EcapaSpeechEncoder(nn.Module):
    """Waveform ``[B, T]`` (optional relative ``lengths`` ``[B]``) -> embedding ``[B, D]``.

    ``input="features"``: the input is the filter banks ``[B, frames, n_mels]`` that the
    encoder's own ``Fbank`` would compute from the waveform (cached by the data, see
    ``data.audio_input``); the rest (mean normalisation over ``lengths``, ECAPA) is the same.
    ``input_features`` (wired by the data) are the data's filter-bank settings; they must
    equal the encoder's (``n_mels``, ``n_fft``, ``win_length``, ``hop_length``,
    ``sample_rate``), else construction fails naming the difference.

    Defaults are SpeechBrain's VoxCeleb ECAPA-TDNN (80 mels, C=512, D=192); a tiny CPU
    model is e.g. ``channels=[32, 32, 32, 32, 96], embedding_dim=32, res2net_scale=4,
    attention_channels=16, se_channels=16``. ``res2net_scale`` must divide ``channels[1:-1]``.

    Frame-level maps ``[B, C, T']`` are tapped by module path (``crossdistill.models.taps``):
    ``ecapa.mfa`` (multi-layer feature aggregation, ``C = channels[-1]``) or
    ``ecapa.blocks.<i>`` (``C = channels[i]``; the last SE-Res2Net block is
    ``blocks.<len(channels) - 2>``). ``T'`` is ``T // hop + 1`` frames (``hop_length`` ms hop,
    default 10 ms); padded frames past ``lengths`` are included in the map.

    ``lengths`` masks the mean normalisation, the SE blocks and the attentive pooling, but
    not the convolutions: in a zero-padded batch the padded frames (log-Mel of silence,
    about -70 after mean normalisation) reach the last valid frames through the dilated
    TDNN kernels (SpeechBrain's "same" reflect padding sees them instead of the utterance
    end), and through the SE blocks' utterance means every frame. An utterance padded next
    to a longer one therefore gets another embedding than alone (cosine 0.99975, max abs
    diff 0.08 on a trained checkpoint). Fine for training crops; where embeddings must be
    exact, embed each utterance at its true length (``VerificationEvaluator.embed`` does).
    """

    def __init__(
        self,
        n_mels: int = 80,
        channels: Sequence[int] = (512, 512, 512, 512, 1536),
        embedding_dim: int = 192,
        sample_rate: int = 16000,
        kernel_sizes: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        attention_channels: int = 128,
        res2net_scale: int = 8,
        se_channels: int = 128,
        global_context: bool = True,
        dropout: float = 0.0,
        mean_norm: bool = True,
        std_norm: bool = False,
        win_length: float = 25,
        hop_length: float = 10,
        n_fft: int = 400,
        input: str = "waveform",  # the config key student.encoder.input
        input_features: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if input not in INPUTS:
            raise ValueError(f"student.encoder.input={input!r}; valid: {list(INPUTS)}")
        channels = [int(c) for c in channels]
        if len(channels) < 3:
            raise ValueError(
                f"channels must have >= 3 entries (TDNN, SE-Res2Net..., MFA), got {channels}"
            )
        if kernel_sizes is None:
            kernel_sizes = [5] + [3] * (len(channels) - 2) + [1]
        if dilations is None:
            dilations = [1] + list(range(2, len(channels))) + [1]
        for name, value in (("kernel_sizes", kernel_sizes), ("dilations", dilations)):
            if len(value) != len(channels):
                raise ValueError(
                    f"{name}={list(value)} must have len(channels)={len(channels)} entries"
                )
        bad = [c for c in channels[1:-1] if c % res2net_scale]
        if bad:
            raise ValueError(
                f"res2net_scale={res2net_scale} must divide the SE-Res2Net channels "
                f"{channels[1:-1]} (not {bad})"
            )
        self.embedding_dim = embedding_dim
        self.n_mels = n_mels
        self.sample_rate = sample_rate
        self.mean_norm = mean_norm
        self.std_norm = std_norm
        self.input = input
        own = {"sample_rate": sample_rate, "n_mels": n_mels, "n_fft": n_fft,
               "win_length": win_length, "hop_length": hop_length}  # fmt: skip
        self._check_input_features(input_features, own)
        self.fbank = Fbank(
            sample_rate=sample_rate,
            n_mels=n_mels,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
        )
        self.ecapa = ECAPA_TDNN(
            input_size=n_mels,
            lin_neurons=embedding_dim,
            channels=channels,
            kernel_sizes=list(kernel_sizes),
            dilations=list(dilations),
            attention_channels=attention_channels,
            res2net_scale=res2net_scale,
            se_channels=se_channels,
            global_context=global_context,
            dropout=dropout,
        )

    def _check_input_features(
        self, given: Mapping[str, Any] | None, own: Mapping[str, Any]
    ) -> None:
        if given is None:
            return
        if self.input != "features":
            raise ValueError(
                "the data give filter banks (data.audio_input=features) but "
                f"student.encoder.input={self.input!r}; drop that override or set "
                "data.audio_input=waveform"
            )
        differ = [k for k in FBANK_KEYS if k in given and float(given[k]) != float(own[k])]
        if differ:
            pairs = ", ".join(f"data.audio_features.{k}={given[k]} vs "
                              f"student.encoder.{k}={own[k]}" for k in differ)  # fmt: skip
            raise ValueError(f"cached filter banks differ from the encoder's Fbank: {pairs}; "
                             "set them equal (or data.audio_input=waveform)")  # fmt: skip

    def features(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Normalised log-Mel filterbanks ``[B, T', n_mels]`` (float32, no autocast); with
        ``input="features"``, ``wav`` already holds the filter banks ``[B, T', n_mels]``."""
        if self.input == "features":
            if wav.dim() != 3 or wav.shape[-1] != self.n_mels:
                raise ValueError(
                    f"expected filter banks [B, frames, {self.n_mels}] "
                    f"(student.encoder.input=features), got {list(wav.shape)}"
                )
        elif wav.dim() != 2:
            raise ValueError(f"expected a waveform batch [B, T], got shape {list(wav.shape)}")
        with torch.autocast(device_type=wav.device.type, enabled=False):
            feats = wav.float() if self.input == "features" else self.fbank(wav.float())
            if self.mean_norm or self.std_norm:
                mask = frame_mask(lengths, feats.shape[0], feats.shape[1], feats.device)
                weight = mask[..., None].float()
                count = weight.sum(1, keepdim=True)
                mean = (feats * weight).sum(1, keepdim=True) / count
                if self.mean_norm:
                    feats = feats - mean
                if self.std_norm:
                    centred = feats if self.mean_norm else feats - mean
                    var = (centred.square() * weight).sum(1, keepdim=True) / count
                    feats = feats / (var + 1e-10).sqrt()
        return feats

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Tensor:
        feats = self.features(wav, lengths)
        return self.ecapa(feats, lengths=lengths).squeeze(1)
