"""Hydra / OmegaConf helpers: where the shipped configs live, resolvers, composing outside
a Hydra app, the printed summary of a config and the saved full config (docs/configs.md)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import rich.tree
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich import print as rprint

import crossdistill

CONFIG_PACKAGE = "crossdistill.conf"  # conf/ of the repository, shipped as this package
CONFIG_SOURCE = f"pkg://{CONFIG_PACKAGE}"  # `config_path` of the Hydra entry points
ROOT_ENV = "CROSSDISTILL_ROOT"  # data/ and outputs/ go under it (default: the working dir)


def _checkout_config_dir() -> Path | None:
    """``conf/`` of the source checkout crossdistill was imported from (``src/`` layout), or
    None for an installed wheel."""
    package_dir = Path(crossdistill.__file__).resolve().parent
    conf = package_dir.parent.parent / "conf"
    if package_dir.parent.name == "src" and (conf / "__init__.py").is_file():
        return conf
    return None


def import_config_package() -> ModuleType:
    """Import ``crossdistill.conf``. Installed (wheel or editable) it is the package that
    pyproject.toml maps to ``conf/``; imported from a source checkout (``PYTHONPATH=src``)
    it is that checkout's ``conf/``, bound to the same name here, so a checkout never reads
    the configs of another installed copy."""
    if CONFIG_PACKAGE not in sys.modules and (conf := _checkout_config_dir()) is not None:
        spec = importlib.util.spec_from_file_location(
            CONFIG_PACKAGE, conf / "__init__.py", submodule_search_locations=[str(conf)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[CONFIG_PACKAGE] = module
        spec.loader.exec_module(module)
        crossdistill.conf = module  # type: ignore[attr-defined]
    return importlib.import_module(CONFIG_PACKAGE)


CONFIG_DIR = Path(next(iter(import_config_package().__path__)))  # the shipped config files


def crossdistill_root() -> str:
    """Absolute root of ``data/`` and ``outputs/``: ``$CROSSDISTILL_ROOT``, else the working
    directory (never the installed source)."""
    return str(Path(os.environ.get(ROOT_ENV) or os.getcwd()).expanduser().resolve())


def _unique_suffix() -> str:
    """pid + random hex: two runs started in the same second never share a run dir."""
    return f"{os.getpid()}{secrets.token_hex(2)}"


def register_resolvers() -> None:
    """``${crossdistill_root:}`` and ``${uid:}`` (the uid is cached: one value per process)."""
    if not OmegaConf.has_resolver("crossdistill_root"):
        OmegaConf.register_new_resolver("crossdistill_root", crossdistill_root)
    if not OmegaConf.has_resolver("uid"):
        OmegaConf.register_new_resolver("uid", _unique_suffix, use_cache=True)


def compose_config(config_name: str = "train", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the shipped ``<config_name>.yaml`` with ``overrides`` outside a Hydra app (no
    run dir, no job); the one way library code and scripts read a config."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    import_config_package()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _leaves(node: DictConfig, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> unresolved value of every leaf (an interpolation stays its ``${...}``
    text; a list is one leaf)."""
    leaves: dict[str, Any] = {}
    for key in node:
        child = node._get_node(key)
        path = f"{prefix}.{key}" if prefix else str(key)
        plain = not (child._is_interpolation() or child._is_none() or child._is_missing())
        if isinstance(child, DictConfig) and plain:
            leaves.update(_leaves(child, path))
        elif isinstance(child, ListConfig) and plain:
            leaves[path] = OmegaConf.to_container(child, resolve=False)
        else:
            leaves[path] = child._value()
    return leaves


def changed_keys(cfg: DictConfig, baseline: DictConfig) -> list[str]:
    """Dotted keys of ``cfg`` set to another value than in ``baseline`` or absent there
    (compared unresolved, so values derived by interpolation are not listed)."""
    before = _leaves(baseline)
    return [key for key, value in _leaves(cfg).items() if before.get(key, object()) != value]


def _primary_defaults(config_name: str) -> dict[str, str | None]:
    """Group -> default option of the shipped primary config, in its defaults order (empty
    for a primary config of the user's own)."""
    primary_file = CONFIG_DIR / f"{config_name}.yaml"
    primary = OmegaConf.load(primary_file) if primary_file.is_file() else {}
    return {
        str(group).removeprefix("override "): option
        for entry in primary.get("defaults", [])
        if not isinstance(entry, str)
        for group, option in entry.items()
    }


def group_defaults(
    config_name: str, choices: Mapping[str, str | None], searchpath: Sequence[str] = ()
) -> DictConfig:
    """The config composed from the chosen group options alone, without overlays
    (experiment, debug, ...) and command-line values; run inside the Hydra app, with the
    app's ``hydra.searchpath`` so that a user's own config folder is found too."""
    from hydra import compose

    # groups with a null default (experiment, debug, hparams_search) overlay the others
    overlays = {g for g, option in _primary_defaults(config_name).items() if option is None}
    overrides = [
        f"{group}={option}"
        for group, option in choices.items()
        if option is not None and not group.startswith("hydra") and group not in overlays
    ]
    if searchpath:
        overrides.append("hydra.searchpath=[" + ",".join(f"'{p}'" for p in searchpath) + "]")
    return compose(config_name=config_name, overrides=overrides)


def _format(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    return str(value)


def print_config_tree(cfg: DictConfig, config_file: str | Path | None = None) -> None:
    """Print what fits a screen: the chosen group options, the command-line overrides, the
    top-level values and every value that differs from the chosen groups' defaults
    (resolved). The full resolved config is ``config_file`` (the run dir's config.yaml)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    title = "CONFIG" + (f"  (full resolved config: {config_file})" if config_file else "")
    tree = rich.tree.Tree(title, style="dim", guide_style="dim")
    scalars = {k: cfg[k] for k in cfg if not isinstance(cfg[k], (DictConfig, ListConfig))}
    if HydraConfig.initialized() and GlobalHydra.instance().is_initialized():
        runtime = HydraConfig.get()
        choices = OmegaConf.to_container(runtime.runtime.choices)
        order = list(_primary_defaults(runtime.job.config_name))
        chosen = sorted(
            (g, o) for g, o in choices.items() if o is not None and not g.startswith("hydra")
        )
        chosen.sort(key=lambda item: order.index(item[0]) if item[0] in order else len(order))
        tree.add("groups: " + " ".join(f"{g}={o}" for g, o in chosen), style="bold")
        if runtime.overrides.task:
            tree.add("command line: " + " ".join(runtime.overrides.task), style="bold")
        baseline = group_defaults(runtime.job.config_name, choices, list(runtime.searchpath))
        changed = [k for k in changed_keys(cfg, baseline) if k not in scalars]
        branch = tree.add("changed from the group defaults", style="bold")
        for key in changed:
            branch.add(f"{key}: {_format(OmegaConf.select(cfg, key))}")
    tree.add("top level: " + ", ".join(f"{k}={v}" for k, v in scalars.items()), style="bold")
    rprint(tree)


def save_resolved_config(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Write ``config.yaml`` (fully resolved) into the run dir; eval reads only this."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path
