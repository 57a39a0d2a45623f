"""scripts/benchmark_overhead.py: its three training loops do the same work.

The benchmark's ratios only mean "framework cost" if the framework, the minimal-Lightning
floor and the hand-written loop train the same steps on the same batches from the same
weights; the final weights tell.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from crossdistill import builders

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_overhead.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_framework_floor_and_plain_loops_train_the_same_steps(benchmark, tmp_path):
    epochs = 6
    results = {}
    for variant, run in (
        ("plain", lambda cfg, dm: benchmark.run_plain(cfg, dm, epochs)),
        ("lightning_floor", lambda cfg, dm: benchmark.run_lightning_floor(cfg, dm, epochs)),
        ("framework", lambda cfg, dm: benchmark.run_framework(cfg, dm, epochs, None)),
        ("bare", lambda cfg, dm: benchmark.run_framework(cfg, dm, epochs, "bare")),
    ):
        work_dir = tmp_path / variant
        work_dir.mkdir()
        cfg = benchmark._compose("mfh", work_dir, [])
        results[variant] = run(cfg, builders.build_datamodule(cfg))

    assert {r["steps"] for r in results.values()} == {epochs}  # one full batch per epoch
    initial = benchmark._weights_abs_sum(
        benchmark._build_student(cfg, builders.build_datamodule(cfg))
    )
    plain = results["plain"]["weights_abs_sum"]
    assert abs(plain - initial) > 1e-3 * initial  # the loops did train
    for variant in ("lightning_floor", "framework", "bare"):
        assert results[variant]["weights_abs_sum"] == pytest.approx(plain, rel=1e-6), variant
    line = benchmark._weights_line({k: [v] for k, v in results.items()})
    assert line.startswith("final weights vs plain (rel.): lightning_floor ")


def test_weights_line_shows_a_loop_that_trained_differently(benchmark):
    results = {
        "plain": [{"weights_abs_sum": 10.0}],
        "framework": [{"weights_abs_sum": 10.5}],
        "loader": [{"weights_abs_sum": None}],
    }
    assert benchmark._weights_line(results) == "final weights vs plain (rel.): framework 5.0e-02"
