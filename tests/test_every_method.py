"""Every method config (``conf/distill/*.yaml``) runs on every modality pair by config alone:
``experiment=<pair>/c2kd distill=<method>`` (the pair's C2KD experiment brings a projection
head, which the feature-level terms read) under ``debug=fast_dev_run`` on tiny data.

Configs that tap intermediate maps get the pair's module paths for the names they declare
(``distill.features``); cross-modal map pairs of different layouts ([B, C, T] speech against
[B, C, H, W] images) compare flattened positions (AT, NST) or pooled maps (FitNets).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import TINY_FACE_VOICE, TINY_OPTICAL_RADAR, TINY_TEXT_IMAGE
from crossdistill.pipeline import train
from crossdistill.utils.config import CONFIG_DIR

METHODS = sorted(p.stem for p in (CONFIG_DIR / "distill").glob("*.yaml"))

#: options for map pairs of different layouts ([B, C, T] vs [B, C, H, W])
CROSS_LAYOUT = {
    "at": ["distill.at.flatten_positions=true"],
    "nst": ["distill.nst.flatten_positions=true"],
    "fitnets_multi": ["distill.feature_hint.pool=true"],
}

#: per pair: the tiny-data overrides, the module paths of the map names the configs
#: declare, and overrides for cross-modal map pairs
PAIRS: dict[str, dict] = {
    "face_voice": {
        "overrides": TINY_FACE_VOICE,
        "features": {
            "student": {"map": "encoder.ecapa.mfa", "l3": "encoder.ecapa.blocks.1",
                        "l4": "encoder.ecapa.mfa"},
            "teacher": {"map": "encoder.backbone.layer4", "l3": "encoder.backbone.layer3",
                        "l4": "encoder.backbone.layer4"},
        },
        "method_overrides": CROSS_LAYOUT,  # ECAPA [B, C, T] vs a timm ResNet [B, C, H, W]
    },
    "optical_radar": {
        "overrides": TINY_OPTICAL_RADAR,
        "features": {
            side: {"map": "encoder.blocks.1", "l3": "encoder.blocks.1", "l4": "encoder.blocks.2"}
            for side in ("student", "teacher")
        },
        "method_overrides": {"fitnets_multi": ["distill.feature_hint.pool=true"]},  # 8 vs 4 px
    },
    "text_image": {
        "overrides": TINY_TEXT_IMAGE,
        "features": {
            "student": {"map": "encoder.backbone.layer3", "l3": "encoder.backbone.layer3",
                        "l4": "encoder.backbone.layer4"},
            "teacher": {name: "{path:encoder.encoder.layers.0,channels_last:true}"
                        for name in ("map", "l3", "l4")},
        },
        "method_overrides": CROSS_LAYOUT,  # an image map vs text tokens [B, C, L]
    },
}


def method_overrides(pair: str, method: str) -> list[str]:
    """The overrides that run ``method`` on ``pair``: the feature paths the config needs."""
    spec = yaml.safe_load((CONFIG_DIR / "distill" / f"{method}.yaml").read_text())
    paths = PAIRS[pair]["features"]
    overrides = [
        f"++distill.features.{side}.{name}={paths[side][name]}"
        for side, names in (spec.get("features") or {}).items()
        for name in names or {}
    ]
    if (spec.get("features") or {}).get("teacher"):  # the feature cache holds embeddings only
        overrides.append("++teacher.cache_features=false")
    overrides += PAIRS[pair]["method_overrides"].get(method, [])
    return overrides


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_method_fast_dev_run_on_pair(pair: str, method: str, compose_cfg, tmp_path: Path):
    cfg = compose_cfg(
        f"experiment={pair}/c2kd", f"distill={method}", "debug=fast_dev_run",
        *PAIRS[pair]["overrides"], *method_overrides(pair, method), "logger=[]",
    )
    summary = train(cfg)
    assert summary["student"], f"distill={method} on {pair}: no student metrics"
    assert (tmp_path / "run" / "metrics.json").is_file()
