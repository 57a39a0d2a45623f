"""scripts/benchmark_overhead.py: its three training loops do the same work.

The benchmark's ratios only mean "framework cost" if the framework, the minimal-Lightning
floor and the hand-written loop train the same steps on the same batches from the same
weights; the final weights tell.
"""

from __future__ import annotations

import importlib.util
import math
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


def test_paired_ratio_is_the_geometric_mean_of_round_ratios_with_a_t_interval(benchmark):
    # rounds ran back to back: framework 11, 10.5, 12 s vs plain 10, 10, 10 s
    ratios = [1.1, 1.05, 1.2]
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t quantile 0.975, 2 degrees of freedom
    centre, low, high = benchmark.paired_ratio([11.0, 10.5, 12.0], [10.0, 10.0, 10.0])
    assert centre == pytest.approx(math.exp(mean))
    assert low == pytest.approx(math.exp(mean - half))
    assert high == pytest.approx(math.exp(mean + half))
    # a constant ratio has a zero-width interval; one round has none
    assert benchmark.paired_ratio([2.0, 4.0], [1.0, 2.0]) == pytest.approx((2.0, 2.0, 2.0))
    centre, low, high = benchmark.paired_ratio([2.0], [1.0])
    assert centre == 2.0 and math.isnan(low) and math.isnan(high)


def test_verdict_needs_the_whole_interval_on_one_side_of_the_target(benchmark):
    assert benchmark.verdict(1.01, 1.04, 1.05) == "met"
    assert benchmark.verdict(1.06, 1.09, 1.05) == "NOT met"
    assert benchmark.verdict(1.03, 1.07, 1.05) == "not resolved"
    assert benchmark.verdict(math.nan, math.nan, 1.05) == "not resolved"
    assert benchmark.verdict(4.0, 7.0, 3.0, at_least=True) == "met"
    assert benchmark.verdict(1.0, 2.5, 3.0, at_least=True) == "NOT met"
    assert benchmark.verdict(2.0, 4.0, 3.0, at_least=True) == "not resolved"


def test_report_pairs_rounds_and_says_not_resolved_when_rounds_disagree(benchmark):
    def run(epoch: float, steps: int = 10) -> dict:
        return {"epoch_s": epoch, "epoch_cpu_s": epoch, "total_s": 3 * epoch,
                "total_cpu_s": 3 * epoch, "steps": 3 * steps, "step_s": epoch / steps,
                "step_cpu_s": epoch / steps, "samples_per_s": 1.0, "maxrss_mb": 1.0,
                "weights_abs_sum": 1.0}

    # round 2 ran on a slower machine state for every variant: pairing removes it
    results = {
        "framework": [run(10.2), run(20.4), run(10.3)],
        "plain": [run(10.0), run(20.0), run(10.0)],
        "lightning_floor": [run(10.1), run(20.2), run(10.1)],
        "loader": [run(1.0), run(2.0), run(1.0)],
    }
    lines = benchmark.report("mfh", results, 3)
    epoch_cpu = next(line for line in lines if line.startswith("epoch, CPU"))
    assert epoch_cpu.endswith("<= 1.05 met")  # paired ratios 1.02, 1.02, 1.03
    # the same medians unpaired would not tell: now let the rounds disagree
    results["framework"] = [run(10.2), run(22.0), run(10.3)]
    lines = benchmark.report("mfh", results, 3)
    epoch_cpu = next(line for line in lines if line.startswith("epoch, CPU"))
    assert epoch_cpu.endswith("<= 1.05 not resolved")
    assert any(line.startswith("framework vs floor") for line in lines)
