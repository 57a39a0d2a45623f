"""Bad input fails in one line before anything is created (each failed on the code before:
it was accepted, failed after training, or wrote a run dir / eval_logs first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crossdistill.utils.config import CONFIG_DIR
from crossdistill.validation import ConfigError, check_checkpoint_file, validate_train_config

BIN = Path(sys.executable).parent
EXPERIMENTS = sorted(
    str(p.relative_to(CONFIG_DIR / "experiment").with_suffix(""))
    for p in (CONFIG_DIR / "experiment").rglob("*.yaml")
)


def run_cli(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_passes_validation(compose_cfg, experiment):
    validate_train_config(compose_cfg(f"experiment={experiment}"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("test_ckpt=bset", "test_ckpt='bset' is not valid.*did you mean `best`"),
        ("monitor=test/eer", "monitor='test/eer': model selection .* validation metric"),
        ("optimized_metric=test/acc", "optimized_metric='test/acc'"),
        ("monitor_mode=maximum", "monitor_mode='maximum' is not valid"),
        ("+distil.kd.weight=1", "unknown top-level config key `distil` .did you mean `distill`"),
    ],
)
def test_bad_values_are_rejected(compose_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        validate_train_config(compose_cfg(override))


def test_empty_truncated_and_valid_checkpoints(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, good)
    check_checkpoint_file(good, "ckpt_path")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"ckpt_path=.*empty.ckpt: the file is empty"):
        check_checkpoint_file(empty, "ckpt_path")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ConfigError, match="truncated.ckpt: not a complete PyTorch checkpoint"):
        check_checkpoint_file(truncated, "teacher.ckpt_path")
    with pytest.raises(ConfigError, match="file not found"):
        check_checkpoint_file(tmp_path / "missing.ckpt", "ckpt_path")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_trainer_without_gpu_is_rejected(compose_cfg):
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu but no CUDA GPU"):
        validate_train_config(compose_cfg("trainer=gpu"))


def test_cli_errors_are_one_line_and_create_nothing(tmp_path):
    """Through the real command line: exit status 2, one line naming the key or file, and
    no run dir (Hydra would create it before the job starts)."""
    truncated = tmp_path / "bad.ckpt"
    truncated.write_bytes(b"PK\x03\x04 not really a checkpoint")
    logs = tmp_path / "logs"
    cases = {
        "+distil.kd.weight=1": "did you mean `distill`?",
        "test_ckpt=bset": "test_ckpt='bset'",
        f"ckpt_path={truncated}": "bad.ckpt: not a complete PyTorch checkpoint",
        f"teacher.ckpt_path={truncated}": "teacher.ckpt_path=",
    }
    for override, expected in cases.items():
        proc = run_cli("crossdistill-train", override, f"paths.log_dir={logs}", cwd=tmp_path)
        assert proc.returncode == 2, (override, proc.stderr[-2000:])
        assert expected in last_line(proc)
        assert "Traceback" not in proc.stderr
    assert not logs.exists()


def test_eval_rejects_a_dir_that_is_not_a_run_and_writes_nothing(tmp_path):
    not_a_run = tmp_path / "somewhere"
    not_a_run.mkdir()
    proc = run_cli("crossdistill-eval", f"run_dir={not_a_run}", cwd=tmp_path)
    assert proc.returncode == 2 and "is not a crossdistill run dir" in last_line(proc)
    assert list(not_a_run.iterdir()) == []
    proc = run_cli("crossdistill-eval", "run_dir=", cwd=tmp_path)
    assert proc.returncode == 2 and "run_dir is empty" in last_line(proc)
    proc = run_cli("crossdistill-diagnose", f"run_dir={not_a_run}", cwd=tmp_path)
    assert proc.returncode == 2 and list(not_a_run.iterdir()) == []


def test_command_line_parsing_imports_no_torch():
    """``--help``, typos and bad options answer before torch / Lightning are imported."""
    code = (
        "import sys; import crossdistill.train, crossdistill.eval, crossdistill.diagnose; "
        "import crossdistill.validation; "
        "heavy = [m for m in ('torch', 'pytorch_lightning') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
