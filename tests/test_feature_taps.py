"""Features tapped by module path: recorders on timm, SpeechBrain and text encoders, named
features through the DistillModule, connectors, errors and hook hygiene."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch
from omegaconf import OmegaConf
from speechbrain.lobes.models.ECAPA_TDNN import TDNNBlock
from torch import nn

from crossdistill import builders
from crossdistill.losses import LossComposer
from crossdistill.models.connectors import build_connector
from crossdistill.models.heads import LinearClassifier, ProjectionHead
from crossdistill.models.image import TimmImageEncoder
from crossdistill.models.speech import EcapaSpeechEncoder
from crossdistill.models.taps import FeatureRecorder
from crossdistill.models.text import TextTransformerEncoder
from crossdistill.modules import DistillModule
from crossdistill.train import train

torch.set_num_threads(1)

TINY_RESNET = dict(model_name="resnet18", channels=[8, 8, 16, 16], embedding_dim=12)
WIDE_RESNET = dict(model_name="resnet18", channels=[8, 8, 24, 24], embedding_dim=10)
TINY_ECAPA = dict(
    n_mels=20, channels=[8, 8, 8, 8, 24], embedding_dim=8, res2net_scale=4,
    attention_channels=4, se_channels=4,
)  # fmt: skip


def hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in module.modules())


def image_batch(n: int = 2) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "student_input": torch.randn(n, 3, 32, 32, generator=gen),
        "teacher_input": torch.randn(n, 3, 32, 32, generator=gen),
        "label": torch.arange(n) % 3,
        "index": torch.arange(n),
    }


def distill_module(
    spec: dict, student: nn.Module, teacher: nn.Module | None = None, **kwargs
) -> DistillModule:
    s_dim = student.embedding_dim
    return DistillModule(
        student,
        LinearClassifier(s_dim, 3),
        num_classes=3,
        optimizer=torch.optim.SGD,
        teacher_encoder=teacher,
        teacher_classifier=LinearClassifier(teacher.embedding_dim, 3) if teacher else None,
        loss=LossComposer(spec),
        **kwargs,
    )


# ------------------------------------------------------------------ the recorder itself
def test_unknown_path_fails_at_build_time_naming_close_paths():
    torch.manual_seed(0)
    spec = {
        "features": {"student": {"map": "encoder.backbone.layer_3"}},
        "spatial_uniformity": {"feature": "map"},
    }
    with pytest.raises(ValueError) as err:
        distill_module(spec, TimmImageEncoder(**TINY_RESNET))
    message = str(err.value)
    assert "\n" not in message
    assert "distill.features.student.map: no module at path 'encoder.backbone.layer_3'" in message
    assert "'encoder.backbone.layer3'" in message  # the suggestion


def test_a_tap_the_forward_never_calls_fails_loudly():
    enc = TimmImageEncoder(**TINY_RESNET)  # num_classes=0: the timm head `fc` is never run
    recorder = FeatureRecorder(enc, {"head": "backbone.fc"}, "distill.features.student")
    silent = r"\['head \(backbone.fc\)'\] produced no output"
    with pytest.raises(RuntimeError, match=silent), recorder.recording():
        enc(torch.randn(2, 3, 32, 32))
    assert hook_count(enc) == 0


def test_recorded_shapes_on_timm_speechbrain_and_text_encoders():
    torch.manual_seed(0)
    resnet = TimmImageEncoder(**TINY_RESNET)
    with FeatureRecorder(
        resnet, {"l2": "backbone.layer2", "l3": "backbone.layer3"}
    ).recording() as f:
        resnet(torch.randn(2, 3, 32, 32))
    assert f["l2"].shape == (2, 8, 16, 16) and f["l3"].shape == (2, 16, 8, 8)

    ecapa = EcapaSpeechEncoder(**TINY_ECAPA)
    taps = {"mfa": "ecapa.mfa", "block1": "ecapa.blocks.1"}
    with FeatureRecorder(ecapa, taps).recording() as f:
        ecapa(torch.randn(2, 8000))
    assert f["mfa"].shape == (2, 24, 51) and f["block1"].shape == (2, 8, 51)

    text = TextTransformerEncoder(vocab_size=20, d_model=16, nhead=2, num_layers=2, max_len=8)
    taps = {"tokens": {"path": "encoder.layers.1", "channels_last": True}}
    with FeatureRecorder(text, taps).recording() as f:
        text(torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]]))
    assert f["tokens"].shape == (2, 16, 4)  # [B, L, d_model] moved to [B, d_model, L]


def test_connectors_follow_the_shapes():
    assert isinstance(build_connector((2, 8, 4, 4), (2, 8, 4, 4)), nn.Identity)
    conv = build_connector((2, 8, 4, 4), (2, 16, 4, 4))
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.out_channels == 16
    assert isinstance(build_connector((2, 8, 51), (2, 24, 51)), nn.Conv1d)
    linear = build_connector((2, 8), (2, 12))
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (8, 12)
    with pytest.raises(ValueError, match=r"pair 0: no connector from student shape \[B, 8, 4, 4\]"):
        build_connector((2, 8, 4, 4), (2, 8, 2, 2), "pair 0")


# ------------------------------------------------------------------ the distill config
def test_composer_checks_the_features_key():
    su = {"spatial_uniformity": {"feature": "map"}}
    with pytest.raises(ValueError, match=r"reads student feature 'map', which distill.features"):
        LossComposer({"features": {"student": {"other": "encoder.x"}}, **su})
    with pytest.raises(ValueError, match=r"distill.features.student.map is not set \('\?\?\?'\)"):
        LossComposer({"features": {"student": {"map": "???"}}, **su})
    with pytest.raises(ValueError, match=r"distill.features must map \['student', 'teacher'\]"):
        LossComposer({"features": {"students": {}}, **su})
    # declared but unread features are not tapped (a term with weight 0 included)
    composer = LossComposer(
        {"features": {"student": {"map": "encoder.a", "unused": "???"}}, "ce": {}, **su}
    )
    assert set(composer.feature_taps["student"]) == {"map"}
    off = LossComposer({"features": {"student": {"map": "???"}}, "ce": {},
                        "spatial_uniformity": {"weight": 0.0, "feature": "map"}})  # fmt: skip
    assert off.feature_taps == {"student": {}, "teacher": {}}
    assert "student_features" not in off.required_fields


def test_hooks_only_for_requested_features_and_none_left_behind(monkeypatch):
    torch.manual_seed(0)
    student, teacher = TimmImageEncoder(**TINY_RESNET), TimmImageEncoder(**WIDE_RESNET)
    registered: list[str] = []
    original = nn.Module.register_forward_hook

    def counting(self, hook, *args, **kwargs):
        registered.append(type(self).__name__)
        return original(self, hook, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "register_forward_hook", counting)
    # declared, but no term reads it: nothing is tapped
    spec = {"features": {"student": {"map": "encoder.backbone.layer3"}}, "ce": {}, "kd": {}}
    module = distill_module(spec, student, teacher)
    inputs = module.loss_inputs(image_batch())
    assert inputs.student_features == {} and inputs.teacher_features == {}
    assert registered == []
    # requested on both sides: one hook per tap during the step, none afterwards
    spec = {
        "features": {
            "student": {"l3": "encoder.backbone.layer3"},
            "teacher": {"l3": "encoder.backbone.layer3"},
        },
        "feature_hint": {"pairs": [{"student": "l3", "teacher": "l3"}]},
    }
    module = distill_module(spec, student, teacher, example_batch=image_batch())
    registered.clear()
    module.loss_inputs(image_batch())
    assert sorted(registered) == ["Sequential", "Sequential"]
    assert hook_count(module) == 0
    ref = weakref.ref(module)
    del module
    gc.collect()
    assert ref() is None  # nothing on the (surviving) encoders keeps the module alive
    assert hook_count(student) == hook_count(teacher) == 0


# ------------------------------------------------------------------ gradients and values
def test_gradient_reaches_the_student_through_the_tapped_feature_only():
    torch.manual_seed(0)
    spec = {
        "features": {"student": {"map": "encoder.backbone.layer3"}},
        "spatial_uniformity": {"feature": "map"},
    }
    module = distill_module(spec, TimmImageEncoder(**TINY_RESNET))  # no teacher needed
    assert module.teacher_encoder is None
    total, _ = module.loss(module.loss_inputs(image_batch()))
    total.backward()
    backbone = module.encoder.backbone
    # (timm zero-initialises each block's last BN weight, so its convs get no gradient yet)
    assert backbone.layer3[0].bn2.weight.grad.abs().sum() > 0
    assert backbone.conv1.weight.grad.abs().sum() > 0  # the stem, through every stage
    assert all(p.grad is None for p in backbone.layer4.parameters())  # after the tap
    assert all(p.grad is None for p in module.encoder.embedding.parameters())


def _ecapa_mfa_by_hand(enc: EcapaSpeechEncoder, wav: torch.Tensor) -> torch.Tensor:
    """SpeechBrain's ECAPA_TDNN.forward written out up to the multi-layer aggregation."""
    x = enc.features(wav).transpose(1, 2)
    outputs = []
    for layer in enc.ecapa.blocks:
        x = layer(x) if isinstance(layer, TDNNBlock) else layer(x, lengths=None)
        outputs.append(x)
    return enc.ecapa.mfa(torch.cat(outputs[1:], dim=1))


def test_spatial_uniformity_on_a_tapped_ecapa_map_equals_the_map_by_hand():
    torch.manual_seed(0)
    enc = EcapaSpeechEncoder(**TINY_ECAPA)
    spec = {
        "features": {"student": {"map": "encoder.ecapa.mfa"}},
        "spatial_uniformity": {"feature": "map", "power": 2.0},
    }
    module = distill_module(spec, enc).eval()
    wav = torch.randn(3, 8000)
    batch = {"student_input": wav, "label": torch.tensor([0, 1, 2])}
    with torch.no_grad():
        _, parts = module.loss(module.loss_inputs(batch))
        fmap = _ecapa_mfa_by_hand(enc, wav)  # [B, C, T']
    energy = fmap.pow(2).mean(1) + 1e-12  # [B, T']
    a = energy / energy.sum(1, keepdim=True)
    kl = (a * a.log()).sum(1) + math.log(fmap.shape[2])
    assert parts["spatial_uniformity"].item() == pytest.approx(kl.mean().item(), rel=1e-5)
    assert kl.mean().item() > 1e-3  # a real, non-uniform map


def test_text_transformer_tokens_reach_spatial_uniformity():
    torch.manual_seed(0)
    text = TextTransformerEncoder(vocab_size=20, d_model=16, nhead=2, num_layers=2, max_len=8)
    spec = {
        # the last layer before the final LayerNorm (after it every token has energy 1)
        "features": {
            "student": {"tok": {"path": "encoder.encoder.layers.1", "channels_last": True}}
        },
        "spatial_uniformity": {"feature": "tok"},
    }
    module = distill_module(spec, text)
    batch = {
        "student_input": torch.tensor([[3, 4, 5, 6], [7, 8, 9, 0]]),
        "label": torch.tensor([0, 1]),
    }
    inputs = module.loss_inputs(batch)
    assert inputs.student_features["tok"].shape == (2, 16, 4)
    total, _ = module.loss(inputs)
    total.backward()
    assert text.token_emb.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ teacher features
def test_multi_layer_hint_with_connectors_in_optimizer_and_checkpoint():
    torch.manual_seed(0)
    student, teacher = TimmImageEncoder(**TINY_RESNET), TimmImageEncoder(**WIDE_RESNET)
    spec = {
        "features": {
            "student": {"l2": "encoder.backbone.layer2", "l3": "encoder.backbone.layer3"},
            "teacher": {"l2": "encoder.backbone.layer2", "l3": "encoder.backbone.layer3"},
        },
        "ce": {},
        "feature_hint": {"pairs": [{"student": "l2", "teacher": "l2"},
                                   {"student": "l3", "teacher": "l3"}]},
    }  # fmt: skip
    module = distill_module(spec, student, teacher, example_batch=image_batch())
    connectors = module.loss.terms["feature_hint"].connectors
    assert isinstance(connectors[0], nn.Identity)  # layer2: 8 channels on both sides
    assert isinstance(connectors[1], nn.Conv2d) and connectors[1].out_channels == 24
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in connectors.parameters()} <= in_optimizer
    module.train()
    inputs = module.loss_inputs(image_batch())
    assert not inputs.teacher_features["l3"].requires_grad  # frozen teacher, no graph
    assert not module.teacher_encoder.training
    # the hint by hand: identity pair + conv pair, mean squared error per sample
    s, t = inputs.student_features, inputs.teacher_features
    expected = (s["l2"] - t["l2"]).pow(2).flatten(1).mean(1) + (
        connectors[1](s["l3"]) - t["l3"]
    ).pow(2).flatten(1).mean(1)
    total, parts = module.loss(inputs)
    assert parts["feature_hint"].item() == pytest.approx(expected.mean().item(), rel=1e-5)
    total.backward()
    assert connectors[1].weight.grad.abs().sum() > 0
    # saved and restored with the module
    state = module.state_dict()
    assert "loss.terms.feature_hint.connectors.1.weight" in state
    torch.manual_seed(1)
    again = distill_module(
        spec, TimmImageEncoder(**TINY_RESNET), TimmImageEncoder(**WIDE_RESNET),
        example_batch=image_batch(),
    )  # fmt: skip
    again.load_state_dict(state, strict=True)
    torch.testing.assert_close(again.loss.terms["feature_hint"].connectors[1].weight,
                               connectors[1].weight)  # fmt: skip


def test_shape_binding_leaves_batchnorm_and_random_streams_alone():
    torch.manual_seed(0)
    student, teacher = TimmImageEncoder(**TINY_RESNET), TimmImageEncoder(**WIDE_RESNET)
    stats = student.backbone.bn1.running_mean.clone()
    spec = {
        "features": {"student": {"l3": "encoder.backbone.layer3"},
                     "teacher": {"l3": "encoder.backbone.layer3"}},
        "feature_hint": {"pairs": [{"student": "l3", "teacher": "l3"}]},
    }  # fmt: skip
    module = distill_module(spec, student, teacher, example_batch=image_batch())
    torch.testing.assert_close(student.backbone.bn1.running_mean, stats)
    assert module.encoder.training  # the train flag is restored
    state = torch.random.get_rng_state()
    assert module.feature_shapes(image_batch()) == ({"l3": (2, 16, 8, 8)}, {"l3": (2, 24, 8, 8)})
    assert torch.equal(torch.random.get_rng_state(), state)


def test_connectors_need_an_example_batch_and_cache_refuses_teacher_features():
    spec = {
        "features": {"student": {"l3": "encoder.backbone.layer3"},
                     "teacher": {"l3": "encoder.backbone.layer3"}},
        "feature_hint": {"pairs": [{"student": "l3", "teacher": "l3"}]},
    }  # fmt: skip
    student, teacher = TimmImageEncoder(**TINY_RESNET), TimmImageEncoder(**WIDE_RESNET)
    with pytest.raises(ValueError, match="example_batch"):
        distill_module(spec, student, teacher)
    with pytest.raises(ValueError, match=r"cache_features stores embeddings only.*\['l3'\]"):
        distill_module(spec, student, teacher, teacher_cache=object(), example_batch=image_batch())
    with pytest.raises(ValueError, match="no teacher was given"):
        distill_module(spec, student, None)


# ------------------------------------------------------------------ matching embedding
class _Scale(nn.Module):
    def __init__(self, dim: int, factor: float) -> None:
        super().__init__()
        self.embedding_dim, self.factor = dim, factor
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor * self.weight


def test_teacher_embedding_for_matching():
    x_t = torch.randn(4, 6)
    batch = {"student_input": torch.randn(4, 6), "teacher_input": x_t, "label": torch.arange(4) % 3}
    projection = ProjectionHead(6, 6, hidden_dim=None)
    with_projection = distill_module({"ce": {}, "kd": {}}, _Scale(6, 1.0), _Scale(6, 2.0),
                                     projection=projection).eval()  # fmt: skip
    out = with_projection.teacher_embedding_for_matching(batch)
    torch.testing.assert_close(out, projection(2.0 * x_t))
    assert not out.requires_grad
    raw = distill_module({"ce": {}, "hard_l2": {}}, _Scale(6, 1.0), _Scale(6, 2.0))
    torch.testing.assert_close(raw.teacher_embedding_for_matching(batch), 2.0 * x_t)
    unaligned = distill_module({"ce": {}, "kd": {}}, _Scale(6, 1.0), _Scale(6, 2.0))
    assert unaligned.teacher_embedding_for_matching(batch) is None
    no_faces = {k: v for k, v in batch.items() if k != "teacher_input"}
    assert with_projection.teacher_embedding_for_matching(no_faces) is None


# ------------------------------------------------------------------ through the pipeline
def test_fitnets_multi_needs_paths_before_any_teacher_is_trained(tiny_face_voice):
    cfg = tiny_face_voice("face_voice/kd", "distill=fitnets_multi", "debug=fast_dev_run")
    with pytest.raises(ValueError, match=r"distill.features.student.l3 is not set"):
        train(cfg)


def test_fast_dev_run_cross_modal_multi_layer_hint(tiny_face_voice):
    """Face teacher (timm ResNet) -> voice student (ECAPA): two pooled hint pairs, set
    from the command line only."""
    cfg = tiny_face_voice(
        "face_voice/kd", "distill=fitnets_multi", "debug=fast_dev_run",
        "teacher.cache_features=false",  # the cache holds embeddings, not feature maps
        "distill.feature_hint.pool=true",
        "distill.features.student.l3=encoder.ecapa.blocks.2",
        "distill.features.student.l4=encoder.ecapa.mfa",
        "distill.features.teacher.l3=encoder.backbone.layer3",
        "distill.features.teacher.l4=encoder.backbone.layer4",
    )  # fmt: skip
    summary = train(cfg)
    assert 0.0 <= summary["student"]["test/eer"] <= 1.0
    dm = builders.build_datamodule(cfg)
    loss = LossComposer(OmegaConf.to_container(cfg.distill, resolve=True))
    teacher = builders.build_teacher_module(cfg, dm)
    module = builders.build_student_module(cfg, dm, loss, teacher)
    connectors = [type(c) for c in module.loss.terms["feature_hint"].connectors]
    assert connectors == [nn.Identity, nn.Linear]  # pooled student 8 / 24 -> teacher 8 / 8


def test_fast_dev_run_dskd_on_a_tapped_student_map(tiny_face_voice):
    cfg = tiny_face_voice(
        "face_voice/no_kd", "distill=dskd", "debug=fast_dev_run",
        "distill.features.student.map=encoder.ecapa.mfa",
    )  # fmt: skip
    summary = train(cfg)
    assert summary["teacher"] == {}  # student-only terms: no teacher trained or loaded
    assert 0.0 <= summary["student"]["test/eer"] <= 1.0
