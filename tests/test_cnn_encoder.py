"""SmallCNN: output shapes (images and 1-D signals), tap paths, bad input, learning."""

from __future__ import annotations

import pytest
import torch

from crossdistill.models.cnn import SmallCNN
from crossdistill.models.taps import FeatureRecorder


def test_image_shapes_and_block_maps():
    model = SmallCNN(in_channels=1, channels=[4, 8, 16], embedding_dim=10)
    maps = {}
    for i in range(3):
        model.blocks[i].register_forward_hook(lambda m, x, y, i=i: maps.__setitem__(i, y.shape))
    out = model(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 10) and model.embedding_dim == 10
    assert maps == {0: (2, 4, 8, 8), 1: (2, 8, 4, 4), 2: (2, 16, 2, 2)}
    names = dict(model.named_modules())
    assert {"blocks.0", "blocks.1", "blocks.2"} <= set(names)


def test_one_d_signals_and_no_embedding_layer():
    model = SmallCNN(in_channels=1, channels=[4, 6], embedding_dim=None, dims=1)
    assert model(torch.randn(3, 100)).shape == (3, 6) and model.embedding_dim == 6
    assert model(torch.randn(3, 1, 100)).shape == (3, 6)


def test_lenet_style_and_avg_pool_options():
    model = SmallCNN(in_channels=1, channels=[6, 16], kernel_size=5, pool="avg", embedding_dim=84)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 84)


def test_taps_on_the_encoder_paths():
    encoder = SmallCNN(in_channels=3, channels=[4, 8, 16], embedding_dim=8)
    module = torch.nn.ModuleDict({"encoder": encoder})
    recorder = FeatureRecorder(module, {"mid": "encoder.blocks.1", "last": "encoder.blocks.2"})
    with recorder.recording() as features:
        module["encoder"](torch.randn(2, 3, 32, 32))
    assert features["mid"].shape == (2, 8, 8, 8) and features["last"].shape == (2, 16, 4, 4)
    with pytest.raises(ValueError, match="encoder.blocks.3"):
        FeatureRecorder(module, {"bad": "encoder.blocks.3"})


def test_wrong_input_names_the_expected_shape():
    model = SmallCNN(in_channels=3, channels=[4])
    with pytest.raises(ValueError, match=r"expects input \[B, 3, H, W\], got \[2, 1, 8, 8\]"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="dims must be 1"):
        SmallCNN(dims=3)
    with pytest.raises(ValueError, match="pool='median' is not valid"):
        SmallCNN(pool="median")


def test_it_learns_a_separable_image_task():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    y = (x[:, 0, :4].mean((1, 2)) > x[:, 0, 4:].mean((1, 2))).long()  # top vs bottom brighter
    model = torch.nn.Sequential(SmallCNN(in_channels=1, channels=[8, 8], embedding_dim=2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.9
