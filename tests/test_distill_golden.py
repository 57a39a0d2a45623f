"""Golden values of every ``conf/distill/*.yaml`` on fixed inputs (as torchdistill does).

Each config's composer runs once on the same seeded inputs; every term's value and the
total must equal ``tests/fixtures/distill_golden.json``. A changed default (a weight, a
temperature, a reduction) or a changed formula shows up here as a failing test naming the
config and the term. After an intended change, regenerate and review the diff:

    python tests/test_distill_golden.py --regenerate
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import crossdistill.losses  # noqa: F401  (registers every term)
from crossdistill.losses import DataSizes, LossComposer, LossInputs

CONF = Path(__file__).resolve().parents[1] / "conf" / "distill"
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "distill_golden.json"
REGENERATE = "python tests/test_distill_golden.py --regenerate"

#: batch, classes, embedding size (student = projected teacher), raw teacher embedding size
B, NUM_CLASSES, DIM, RAW_DIM = 6, 5, 8, 8
#: shape of every named feature map (without the batch axis), on both sides
MAP_SHAPE = (4, 3, 3)
#: size of the training set the terms are bound to (memory banks, sample indices)
NUM_TRAIN = 20
RTOL, ATOL = 1e-5, 1e-7


def config_names() -> list[str]:
    return sorted(path.stem for path in CONF.glob("*.yaml"))


def _spec(name: str) -> dict[str, Any]:
    """The config with every ``???`` feature path replaced by a placeholder (the composer
    only parses the paths; the maps below are handed to it by name)."""
    spec = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    for side, names in (spec.get("features") or {}).items():
        for feature in names or {}:
            names[feature] = f"golden.{side}.{feature}"
    return spec


def _inputs(composer: LossComposer) -> LossInputs:
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    inputs = LossInputs(  # drawn first: the same values for every config
        labels=torch.tensor([0, 1, 2, 3, 4, 0]),
        student_logits=randn(B, NUM_CLASSES),
        student_plain_logits=randn(B, NUM_CLASSES),
        student_embedding=randn(B, DIM),
        teacher_logits=randn(B, NUM_CLASSES),
        teacher_embedding=randn(B, DIM),
        teacher_raw_embedding=randn(B, RAW_DIM),
        teacher_shared_logits=randn(B, NUM_CLASSES),
        indices=torch.tensor([3, 0, 17, 8, 11, 19]),  # positions in a training set of NUM_TRAIN
    )
    for side in ("student", "teacher"):
        for name in sorted(composer.feature_taps[side]):
            getattr(inputs, f"{side}_features")[name] = randn(B, *MAP_SHAPE)
    return inputs


def golden_values(name: str) -> dict[str, float]:
    """Every term's value and the total of one config on the fixed inputs."""
    torch.manual_seed(0)  # trainable parts (connectors) are initialised from it
    composer = LossComposer(_spec(name))
    inputs = _inputs(composer)
    if composer.needs_feature_shapes:
        composer.bind_feature_shapes(
            *(
                {n: tuple(t.shape[1:]) for n, t in feats.items()}
                for feats in (inputs.student_features, inputs.teacher_features)
            )
        )
    sizes = DataSizes(
        NUM_TRAIN,
        {"student_embedding": DIM, "teacher_embedding": DIM, "teacher_raw_embedding": RAW_DIM},
    )
    for term in composer.terms.values():
        if term.needs_data_sizes:  # memory banks, embedding heads (CRD)
            term.bind_data_sizes(sizes)
    _, parts = composer(inputs)
    return {key: float(value) for key, value in sorted(parts.items())}


def _fixture() -> dict[str, dict[str, float]]:
    return json.loads(FIXTURE.read_text())


def test_fixture_lists_exactly_the_shipped_configs():
    recorded, shipped = set(_fixture()), set(config_names())
    assert recorded == shipped, (
        f"configs without golden values: {sorted(shipped - recorded)}; golden values of "
        f"removed configs: {sorted(recorded - shipped)}; run `{REGENERATE}`"
    )


@pytest.mark.parametrize("name", config_names())
def test_distill_config_matches_its_golden_values(name):
    expected = _fixture().get(name)
    assert expected is not None, f"no golden values for distill={name}; run `{REGENERATE}`"
    got = golden_values(name)
    assert got.keys() == expected.keys(), f"distill={name}: terms changed; run `{REGENERATE}`"
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=RTOL, abs=ATOL), (
            f"distill={name}: {key} = {got[key]!r}, golden {value!r} (a changed default or "
            f"formula; if intended, run `{REGENERATE}` and review the diff)"
        )


def test_golden_values_catch_a_changed_default():
    """The check can fail: the kd config with another temperature gives other values."""
    spec = _spec("kd")
    spec["kd"]["temperature"] = 2.0
    torch.manual_seed(0)
    composer = LossComposer(spec)
    _, parts = composer(_inputs(composer))
    assert float(parts["kd"]) != pytest.approx(_fixture()["kd"]["kd"], rel=RTOL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regenerate", action="store_true", help=f"rewrite {FIXTURE.name}")
    args = parser.parse_args()
    values = {name: golden_values(name) for name in config_names()}
    if args.regenerate:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
        print(f"wrote {FIXTURE} ({len(values)} configs)")
    else:
        print(json.dumps(values, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
