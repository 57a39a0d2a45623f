"""Image (timm) and speech (ECAPA-TDNN) encoders: shapes, features, stems, errors."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from crossdistill.models.image import TimmImageEncoder
from crossdistill.models.speech import EcapaSpeechEncoder
from crossdistill.models.taps import FeatureRecorder

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY_RESNET = dict(model_name="resnet18", channels=[8, 8, 16, 16], embedding_dim=12)
TINY_ECAPA = dict(
    n_mels=40,
    channels=[32, 32, 32, 32, 96],
    embedding_dim=32,
    res2net_scale=4,
    attention_channels=16,
    se_channels=16,
)


def test_image_encoder_shapes_and_features():
    torch.manual_seed(0)
    enc = TimmImageEncoder(**TINY_RESNET).eval()
    x = torch.randn(2, 3, 32, 32)
    emb = enc(x)
    assert enc.embedding_dim == 12 and emb.shape == (2, 12)
    with FeatureRecorder(enc, {"l3": "backbone.layer3", "l4": "backbone.layer4"}).recording() as f:
        emb2 = enc(x)
    torch.testing.assert_close(emb, emb2)
    # small stem keeps 32 px through layer1; stride-2 stages -> 8x8 after layer3, 4x4 after 4
    assert f["l3"].shape == (2, 16, 8, 8) and f["l4"].shape == (2, 16, 4, 4)


def test_small_input_changes_stem():
    small = TimmImageEncoder(**TINY_RESNET, small_input=True).backbone
    big = TimmImageEncoder(**TINY_RESNET, small_input=False).backbone
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.stride == (2, 2)
    assert isinstance(big.maxpool, nn.MaxPool2d)
    x = torch.randn(2, 3, 32, 32)
    assert small.forward_features(x).shape[-1] == 4
    assert big.forward_features(x).shape[-1] == 1


def test_small_input_deep_stem_and_other_cnn():
    deep = TimmImageEncoder("resnet10t", embedding_dim=8, channels=[8, 8, 16, 16]).backbone
    assert deep.conv1[0].stride == (1, 1) and isinstance(deep.maxpool, nn.Identity)
    with pytest.raises(ValueError, match="patchify"):
        TimmImageEncoder("vit_tiny_patch16_224", embedding_dim=8, small_input=True)


def test_image_encoder_grayscale_and_backward():
    enc = TimmImageEncoder(**TINY_RESNET, in_chans=1)
    enc(torch.randn(3, 1, 40, 40)).sum().backward()
    assert enc.backbone.conv1.weight.grad is not None


def test_unknown_timm_model_error():
    with pytest.raises(ValueError, match=r"timm.list_models") as err:
        TimmImageEncoder("resnet_18x")
    assert "resnet18" in str(err.value)  # close-match suggestion


def test_channels_rejected_for_non_resnet():
    with pytest.raises(ValueError, match="ResNet family"):
        TimmImageEncoder("mobilenetv3_small_050", channels=[8, 8, 8, 8])


def test_image_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    enc = TimmImageEncoder(**TINY_RESNET).eval()
    path = tmp_path / "enc.ckpt"
    # nested the way a Lightning checkpoint stores a submodule
    torch.save({"state_dict": {f"teacher.{k}": v for k, v in enc.state_dict().items()}}, path)
    loaded = TimmImageEncoder(**TINY_RESNET, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(enc(x), loaded(x))
    # bare backbone weights load too; mismatching architecture fails clearly
    torch.save(enc.backbone.state_dict(), path)
    TimmImageEncoder(**TINY_RESNET, checkpoint_path=str(path))
    with pytest.raises(RuntimeError, match="do not fit"):
        TimmImageEncoder(**{**TINY_RESNET, "channels": [8, 8, 16, 32]}, checkpoint_path=str(path))


def test_ecapa_shapes_features_and_backward():
    torch.manual_seed(0)
    enc = EcapaSpeechEncoder(**TINY_ECAPA)
    wav = torch.randn(2, 16000)
    recorder = FeatureRecorder(enc, {"mfa": "ecapa.mfa"})
    with recorder.recording() as f:
        emb = enc(wav)
    assert enc.embedding_dim == 32 and emb.shape == (2, 32)
    assert f["mfa"].shape == (2, 96, 101)  # 10 ms hop, centred frames
    (emb.sum() + f["mfa"].mean()).backward()
    assert enc.ecapa.blocks[0].conv.conv.weight.grad is not None
    enc.eval()
    with torch.no_grad(), recorder.recording():
        tapped = enc(wav)
    with torch.no_grad():
        torch.testing.assert_close(enc(wav), tapped)  # hooks do not change the output


def test_ecapa_lengths_and_last_block_features():
    torch.manual_seed(0)
    enc = EcapaSpeechEncoder(**TINY_ECAPA).eval()
    wav = torch.randn(2, 8000)
    last_block = f"ecapa.blocks.{len(TINY_ECAPA['channels']) - 2}"
    with torch.no_grad(), FeatureRecorder(enc, {"last": last_block}).recording() as f:
        emb = enc(wav, torch.tensor([1.0, 0.5]))
    assert emb.shape == (2, 32) and f["last"].shape == (2, 32, 51) and torch.isfinite(emb).all()
    # per-utterance mean normalisation over the valid frames only
    feats = enc.features(wav, torch.tensor([1.0, 0.5]))
    assert feats[0].mean(0).abs().max() < 1e-4
    assert feats[1, :26].mean(0).abs().max() < 1e-4


def test_ecapa_bad_config():
    with pytest.raises(ValueError, match="res2net_scale"):
        EcapaSpeechEncoder(**{**TINY_ECAPA, "res2net_scale": 5})
    with pytest.raises(ValueError, match="kernel_sizes"):
        EcapaSpeechEncoder(**TINY_ECAPA, kernel_sizes=[5, 3, 1])
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        EcapaSpeechEncoder(**TINY_ECAPA)(torch.randn(2, 1, 16000))


@pytest.mark.parametrize(
    ("path", "cls", "head"),
    [
        ("teacher/timm_image.yaml", "TimmImageEncoder", "LinearClassifier"),
        ("student/timm_image.yaml", "TimmImageEncoder", "LinearClassifier"),
        ("student/ecapa.yaml", "EcapaSpeechEncoder", "AdditiveAngularMarginClassifier"),
    ],
)
def test_configs_point_at_encoders(path, cls, head):
    cfg = OmegaConf.load(CONF / path)
    assert cfg.encoder._target_.endswith(cls)
    assert cfg.classifier._target_ == f"crossdistill.models.heads.{head}"
    assert "num_classes" not in cfg.classifier and "embedding_dim" not in cfg.classifier
    module, name = cfg.encoder._target_.rsplit(".", 1)
    params = dict(OmegaConf.to_container(cfg.encoder))
    params.pop("_target_")
    sig = inspect.signature(getattr(importlib.import_module(module), name))
    assert set(params) <= set(sig.parameters), set(params) - set(sig.parameters)
