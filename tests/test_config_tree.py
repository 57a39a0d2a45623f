"""The printed config fits a screen (groups, command line, changes from the group defaults);
the run dir's config.yaml holds the full resolved config."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from crossdistill.utils.config import (
    CONFIG_PACKAGE,
    changed_keys,
    print_config_tree,
    save_resolved_config,
)


def _leaf_count(node: object) -> int:
    if isinstance(node, dict):
        return sum(_leaf_count(v) for v in node.values())
    return 1


def test_changed_keys_lists_set_values_not_derived_ones():
    baseline = OmegaConf.create({"a": {"x": 1, "y": "${a.x}"}, "b": [1, 2], "c": None})
    cfg = OmegaConf.create({"a": {"x": 2, "y": "${a.x}", "z": 3}, "b": [1, 2], "c": {"k": 0}})
    # a.y follows a.x by interpolation: only what was set is a change
    assert changed_keys(cfg, baseline) == ["a.x", "a.z", "c.k"]
    assert changed_keys(baseline, baseline) == []


def test_printed_config_is_short_and_config_yaml_is_full(tmp_path: Path, capsys):
    overrides = ["experiment=face_voice/c2kd", "seed=7", "data.crop_seconds=0.5"]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
        full = compose("train", overrides=overrides, return_hydra_config=True)
        with open_dict(full):
            full.hydra.runtime.output_dir = str(tmp_path / "run")
            full.hydra.job.config_name = "train"
        HydraConfig.instance().set_config(full)
        cfg = compose("train", overrides=overrides)
        config_file = save_resolved_config(cfg, tmp_path / "run")
        print_config_tree(cfg, config_file)
    GlobalHydra.instance().clear()
    printed = capsys.readouterr().out

    lines = printed.splitlines()
    assert len(lines) < 60, printed
    flat = " ".join(printed.split())  # rich wraps long lines
    assert "experiment=face_voice/c2kd" in flat and "distill=c2kd" in flat  # chosen groups
    assert "seed=7 data.crop_seconds=0.5" in flat  # the command line
    assert "data.crop_seconds: 0.5" in flat  # changed by the command line
    assert "teacher.cache_features: True" in flat  # changed by the experiment
    assert "projection.hidden_dim: 64" in flat
    assert "data.sample_rate" not in flat  # a group default the run keeps
    assert str(config_file) in flat

    saved = OmegaConf.to_container(OmegaConf.load(config_file))
    assert saved == OmegaConf.to_container(cfg, resolve=True)
    assert saved["paths"]["output_dir"] == str(tmp_path / "run")
    assert _leaf_count(saved) > 3 * len(lines)  # the full tree would not fit a screen
