"""teacher.keep_channels: a teacher reduced to the top / bottom channels of an Algorithm 1
ranking, the others at their training mean (values by hand), its errors, and a fusion ->
audio KD run on tiny AV-MNIST-layout data whose checkpoint carries the mask."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from crossdistill.diagnosis import layer_teacher_fn
from crossdistill.models.channel_mask import ChannelMask, read_ranking, refit_classifier
from crossdistill.models.heads import LinearClassifier
from crossdistill.train import train
from crossdistill.utils.teacher_store import teacher_key
from test_avmnist_data import tiny_overrides, tiny_roots  # noqa: F401  (fixture)


def write_ranking(path: Path, ranking: list[int]) -> Path:
    lines = ["rank,channel,score"] + [
        f"{i},{c},{1 - i / len(ranking)}" for i, c in enumerate(ranking)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_top_and_bottom_channels_are_kept_and_the_rest_set_to_the_fill():
    features = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]])
    top = ChannelMask("layer", ranking=[2, 0, 3, 1], keep="top", k=2)
    top.fill.copy_(torch.tensor([2.0, 3.0, 4.0, 5.0]))
    # channels 2 and 0 kept, 1 and 3 replaced by 3 and 5
    assert top(features).tolist() == [[1.0, 3.0, 3.0, 5.0], [3.0, 3.0, 5.0, 5.0]]
    bottom = ChannelMask("layer", ranking=[2, 0, 3, 1], keep="bottom", k=1)
    bottom.fill.copy_(torch.tensor([2.0, 3.0, 4.0, 5.0]))
    assert bottom(features).tolist() == [[2.0, 2.0, 4.0, 5.0], [2.0, 4.0, 4.0, 5.0]]


def test_fill_is_the_per_channel_training_mean_over_batch_and_positions():
    encoder = nn.Sequential(nn.Identity())
    mask = ChannelMask("0", ranking=[0, 1], keep="top", k=1)
    batches = [
        torch.tensor([[[1.0, 3.0], [10.0, 20.0]]]),  # [B=1, C=2, T=2]
        torch.tensor([[[5.0, 7.0], [30.0, 40.0]]]),
    ]
    mask.fit_fill(encoder, batches)
    assert mask.fill.tolist() == [4.0, 25.0]  # (1+3+5+7)/4, (10+20+30+40)/4
    assert bool(mask.fitted)
    # on [B, C, T] maps, channel 1 (not kept) becomes 25 at every position
    assert mask(batches[0]).tolist() == [[[1.0, 3.0], [25.0, 25.0]]]


def test_mask_applies_through_a_forward_hook_on_the_layer():
    encoder = nn.Sequential(nn.Identity(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        encoder[1].weight.copy_(torch.tensor([[1.0, 10.0]]))
    mask = ChannelMask("0", ranking=[0, 1], keep="top", k=1)
    mask.fill.copy_(torch.tensor([0.0, 0.5]))
    encoder[0].register_forward_hook(mask.hook)
    assert encoder(torch.tensor([[2.0, 3.0]])).item() == pytest.approx(2.0 + 10 * 0.5)
    mask.active = False
    assert encoder(torch.tensor([[2.0, 3.0]])).item() == pytest.approx(32.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ranking": [0, 0, 1], "keep": "top", "k": 1}, "every channel 0..C-1 once"),
        ({"ranking": [0, 1], "keep": "middle", "k": 1}, "must be one of"),
        ({"ranking": [0, 1], "keep": "top", "k": 3}, r"k must be in \[1, 2\]"),
    ],
)
def test_bad_settings_fail_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChannelMask("layer", **kwargs)


def test_a_layer_with_another_channel_count_fails():
    mask = ChannelMask("encoder.fused", ranking=[1, 0], keep="top", k=1)
    with pytest.raises(ValueError, match="has 3 channels, the ranking 2"):
        mask(torch.zeros(4, 3))


def test_ranking_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="crossdistill-diagnose"):
        read_ranking(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no 'channel' column"):
        read_ranking(tmp_path / "bad.csv")
    assert read_ranking(write_ranking(tmp_path / "r.csv", [2, 0, 1])) == [2, 0, 1]


def test_refit_classifier_learns_the_kept_channels_from_scratch_and_stays_frozen():
    torch.manual_seed(0)
    embeddings = torch.tensor([[1.0, 0.0], [2.0, 0.5], [-1.0, 0.2], [-2.0, -0.1]])
    labels = torch.tensor([1, 1, 0, 0])
    classifier = LinearClassifier(2, 2)
    before = classifier.fc.weight.clone()
    assert refit_classifier(classifier, embeddings, labels, steps=200) == 1.0
    assert not torch.equal(before, classifier.fc.weight)
    assert not any(p.requires_grad for p in classifier.parameters())


@pytest.mark.parametrize("retrain_head", [False, True])
def test_fusion_teacher_reduced_to_its_audio_channels_distils_and_is_saved(
    tiny_roots,  # noqa: F811
    compose_cfg,
    tmp_path,
    retrain_head,
):
    ranking = write_ranking(tmp_path / "seed_0.csv", list(range(127, -1, -1)))  # audio first
    common = ["experiment=avmnist/fusion2a", "distill=kd", "trainer.max_epochs=1",
              "teacher.max_epochs=1", *tiny_overrides(tiny_roots)]  # fmt: skip
    masked = compose_cfg(
        *common,
        "teacher.keep_channels.keep=top",
        "teacher.keep_channels.k=64",
        f"teacher.keep_channels.ranking={tmp_path}/seed_${{seed}}.csv",
        f"teacher.keep_channels.retrain_head={retrain_head}",
    )
    # the trained teacher is the same with or without the mask: one cached teacher
    assert teacher_key(masked) == teacher_key(compose_cfg(*common))
    summary = train(masked)
    state = torch.load(Path(summary["checkpoint"]), map_location="cpu", weights_only=False)
    kept = state["state_dict"]["teacher_channel_mask.kept"]
    assert kept.nonzero().flatten().tolist() == list(range(64, 128))
    fill = state["state_dict"]["teacher_channel_mask.fill"]
    assert fill.abs().sum() > 0 and bool(state["state_dict"]["teacher_channel_mask.fitted"])
    recorded = torch.load(Path(summary["run_dir"]) / "teacher" / "teacher.ckpt", weights_only=False)
    head = "classifier.fc.weight"
    refitted = not torch.equal(state["state_dict"][f"teacher_{head}"], recorded["state_dict"][head])
    assert refitted == retrain_head  # only the classifier may change, and only when asked
    encoder_keys = [k for k in recorded["state_dict"] if k.startswith("encoder.")]
    for key in encoder_keys:
        assert torch.equal(state["state_dict"][f"teacher_{key}"], recorded["state_dict"][key])
    assert ranking.is_file()


def test_keep_channels_refuses_the_teacher_feature_cache(tiny_roots, compose_cfg, tmp_path):  # noqa: F811
    write_ranking(tmp_path / "seed_0.csv", list(range(128)))
    cfg = compose_cfg(
        "experiment=avmnist/fusion2a",
        "distill=kd",
        "debug=fast_dev_run",
        *tiny_overrides(tiny_roots),
        "teacher.keep_channels.keep=top",
        f"teacher.keep_channels.ranking={tmp_path}/seed_0.csv",
        "+teacher.cache_features=true",
    )
    with pytest.raises(ValueError, match="set teacher.cache_features=false"):
        train(cfg)


@pytest.mark.parametrize(("layers", "layer", "shortcut_taken"), [
    ((nn.Linear(3, 4), nn.Identity()), "1", True),  # the encoder returns this layer's output
    ((nn.Linear(3, 4), nn.ReLU()), "0", False),  # the ReLU follows: the whole teacher runs
])  # fmt: skip
def test_algorithm1_layer_shortcut_gives_the_logits_of_the_whole_teacher(
    layers, layer, shortcut_taken, caplog
):
    torch.manual_seed(0)
    encoder, classifier = nn.Sequential(*layers), nn.Linear(4, 2)
    module = SimpleNamespace(teacher_encoder=encoder, teacher_classifier=classifier,
                             teacher_logits=lambda x: classifier(encoder(x)))  # fmt: skip
    x_a = torch.randn(10, 3)
    with caplog.at_level(logging.INFO):
        features, fast_fn = layer_teacher_fn(module, x_a, layer, chunk=4)
    assert ("classifier only" in caplog.text) == shortcut_taken
    slow_features, slow_fn = layer_teacher_fn(module, x_a, layer, chunk=4, shortcut=False)
    replaced = features[torch.randperm(10)]
    torch.testing.assert_close(features, slow_features)
    torch.testing.assert_close(fast_fn(replaced), slow_fn(replaced))
