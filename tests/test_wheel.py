"""The built wheel works installed outside the source tree: the configs come from the package
``crossdistill.conf``, runs, data and caches land under the working directory (or
``$CROSSDISTILL_ROOT``), a user's own config folder is found, and nothing is written beside
the installed code or into the repository. No network: pip runs with ``--no-index``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import conftest

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "src", "conf")
TINY_TEXT_IMAGE = [  # one batch per stage; the data are generated on first use
    "experiment=text_image/kd", "debug=fast_dev_run", *conftest.TINY_TEXT_IMAGE
]
OWN_DATA = """\
defaults:
  - gaussian_mfh    # the shipped data config
  - _self_
student_dim: 80
"""
OWN_EXPERIMENT = """\
# @package _global_
defaults:
  - override /data: wide_gaussian
  - override /teacher: linear
  - override /student: linear
  - override /distill: kd_mfh
task_name: my_study
data:
  overlap: 5
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (the build writes build/ and egg-info
    there, not into the repo), installed with ``pip install --target``."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=skip)
        else:
            shutil.copy2(REPO / name, source / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip", "-q"]
    wheel_cmd = ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)]
    subprocess.run([*pip, *wheel_cmd], env=env, check=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("crossdistill-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("crossdistill/conf/")}
    configs = {f"crossdistill/conf/{p.relative_to(REPO / 'conf')}" for p in REPO.glob("conf/**/*")}
    assert {c for c in configs if c.endswith((".yaml", ".py"))} <= shipped
    install_cmd = ["install", "--no-deps", "--target", str(tmp / "site"), str(wheel)]
    subprocess.run([*pip, *install_cmd], env=env, check=True, timeout=300)
    return tmp / "site"


def run_installed(
    site: Path, cwd: Path, *args: str, root: Path | None = None
) -> subprocess.CompletedProcess:
    """``python <args>`` seeing only the installed wheel (no ``src/`` on PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CROSSDISTILL_ROOT")}
    env.update(PYTHONPATH=str(site), WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    if root is not None:
        env["CROSSDISTILL_ROOT"] = str(root)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def files_in(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime) of every file below ``folder``."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def repo_entries() -> set[str]:
    """What a stray write into the repository would add: its top-level entries, the run
    dirs under outputs/ and the datasets under data/, every file of src/ and conf/."""
    found = {p.name for p in REPO.iterdir()}
    for folder, depth in (("outputs", 3), ("data", 2)):
        found |= {str(p.relative_to(REPO)) for p in REPO.glob(f"{folder}{'/*' * depth}")}
    for folder in ("src", "conf"):
        found |= {str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*")}
    return {p for p in found if "__pycache__" not in p and ".egg-info" not in p}


def test_installed_wheel_trains_from_another_working_dir(site: Path, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    installed, repo = files_in(site), repo_entries()

    probe = run_installed(
        site,
        work,
        "-c",
        "import crossdistill; from crossdistill.utils.config import CONFIG_DIR; "
        "print(crossdistill.__file__); print(CONFIG_DIR)",
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    module_file, config_dir = map(Path, probe.stdout.split())
    assert module_file == site / "crossdistill" / "__init__.py"
    assert config_dir == site / "crossdistill" / "conf"

    # debug=limit (not fast_dev_run): a few real epochs, so the teacher is cached
    train = ["-m", "crossdistill.train", "experiment=mfh/exp1", "debug=limit"]
    run = run_installed(site, work, *train)
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (work / "outputs" / "debug" / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file()
    hydra_cfg = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra
    sources = {(s.provider, s.schema, s.path) for s in hydra_cfg.runtime.config_sources}
    assert ("main", "pkg", "crossdistill.conf") in sources
    assert not [s for s in sources if s[1] == "file"]  # no config read from a folder
    paths = OmegaConf.load(run_dir / "config.yaml").paths
    assert (paths.root_dir, paths.data_dir) == (str(work), str(work / "data"))
    assert list((work / "outputs" / "teachers").glob("*/teacher.ckpt"))  # cached teacher
    assert [p.name for p in work.iterdir()] == ["outputs"]
    assert files_in(site) == installed
    assert repo_entries() == repo


def test_crossdistill_root_holds_data_and_outputs(site: Path, tmp_path: Path):
    work, root = tmp_path / "work", tmp_path / "root"
    work.mkdir()
    installed, repo = files_in(site), repo_entries()
    run = run_installed(site, work, "-m", "crossdistill.train", *TINY_TEXT_IMAGE, root=root)
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (root / "outputs" / "debug" / "runs").iterdir()
    assert (run_dir / "metrics.json").is_file()
    assert OmegaConf.load(run_dir / "config.yaml").paths.root_dir == str(root)
    assert list((root / "data").glob("synth_captions-*"))  # generated data
    assert list((root / "data" / "tokenizers").glob("*.json"))
    assert not list(work.iterdir())
    assert files_in(site) == installed
    assert repo_entries() == repo


@pytest.mark.parametrize("how", ["searchpath", "config_dir"])
def test_own_config_folder_extends_the_shipped_groups(site: Path, tmp_path: Path, how: str):
    mine = tmp_path / "my_configs"
    (mine / "data").mkdir(parents=True)
    (mine / "experiment").mkdir()
    (mine / "data" / "wide_gaussian.yaml").write_text(OWN_DATA)
    (mine / "experiment" / "my_study.yaml").write_text(OWN_EXPERIMENT)
    if how == "searchpath":
        add = [f"hydra.searchpath=[file://{mine}]"]
    else:
        add = ["--config-dir", str(mine)]
    run = run_installed(
        site, tmp_path, "-m", "crossdistill.train", *add, "experiment=my_study", "--cfg", "job"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    cfg = OmegaConf.create(run.stdout)
    assert cfg.task_name == "my_study"
    assert (cfg.data.student_dim, cfg.data.overlap) == (80, 5)  # mine
    assert cfg.data.teacher_dim == 25  # the shipped gaussian_mfh
    assert cfg.distill.kd.reduction == "elementwise_mean"  # the shipped kd_mfh
