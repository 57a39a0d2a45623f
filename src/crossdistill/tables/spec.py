"""A table spec (``conf/table/<name>.yaml``): what to run and how to report it.

.. code-block:: yaml

    title: Face -> voice distillation
    rows:                       # row name -> an experiment and/or overrides
      No KD: {experiment: face_voice/no_kd}
      Logit KD: {experiment: face_voice/kd, overrides: [distill.kd.weight=0.5]}
    baseline: No KD             # every other row: paired difference to it over seeds
    seeds: [0, 1, 2]
    metrics: [test/eer, {key: teacher/test/eer, label: teacher EER %, scale: 100, digits: 1}]
    paired_metrics: [test/eer]  # default: every metric not of the teacher
    jobs: 2                     # runs of a row in parallel (hydra-joblib-launcher)
    overrides: [print_config=false]        # for every run
    column_axis: training images           # optional second axis
    columns: {"100 %": [data.train_fraction=1.0], "10 %": [data.train_fraction=0.1]}
    quick: {seeds: [0], overrides: [trainer.max_epochs=3]}  # merged in by --quick
    curve: {key: val/acc, label: val top-1 %, scale: 100}  # curves.png: per-epoch means
    column_contrast: ["10 %", "100 %"]  # does each row's paired difference change between them?
    paired_bootstrap: {metrics: [test/eer], unit: speaker, draws: 2000}  # interval over
                                # test speakers and seeds from the runs' saved trial scores
    teachers: [Logit KD]        # train these rows' teachers first, one job per seed

``quick`` is a partial spec merged over the spec by ``--quick``; its ``overrides`` are added
after the spec's, its ``columns`` replace the override lists of the columns it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from crossdistill.tables.bootstrap import BootstrapSpec, parse_bootstrap
from crossdistill.tables.table import Metric

KEYS = {
    "title", "description", "rows", "baseline", "seeds", "metrics", "paired_metrics", "jobs",
    "overrides", "column_axis", "columns", "quick", "curve", "column_contrast",
    "paired_bootstrap", "teachers",
}
ROW_KEYS = {"experiment", "overrides"}
METRIC_KEYS = {"key", "label", "scale", "digits", "chance"}


@dataclass(frozen=True)
class Row:
    name: str
    experiment: str | None = None
    overrides: tuple[str, ...] = ()

    @property
    def train_overrides(self) -> list[str]:
        head = [f"experiment={self.experiment}"] if self.experiment else []
        return [*head, *self.overrides]


@dataclass(frozen=True)
class Column:
    name: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    rows: tuple[Row, ...]
    baseline: str
    seeds: tuple[int, ...]
    metrics: tuple[Metric, ...]
    paired_metrics: tuple[str, ...] | None = None
    jobs: int = 1
    overrides: tuple[str, ...] = ()
    column_axis: str = ""
    columns: tuple[Column, ...] = (Column(""),)
    description: str = ""
    source: str = ""
    curve: Metric | None = None
    column_contrast: tuple[str, str] | None = None
    paired_bootstrap: BootstrapSpec | None = None
    teachers: tuple[str, ...] = ()  # rows whose teacher is trained before the cells

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)


def slug(name: str) -> str:
    """A directory name for a row or column: ``Both (C2KD)`` -> ``both_c2kd``."""
    text = re.sub(r"[^0-9a-zA-Z.]+", "_", name.replace("%", "pct")).strip("_").lower()
    return text or "default"


def spec_dir() -> Path:
    from crossdistill.utils.config import CONFIG_DIR

    return Path(CONFIG_DIR) / "table"


def available_specs() -> list[str]:
    return sorted(p.stem for p in spec_dir().glob("*.yaml"))


def find_spec(name_or_path: str) -> Path:
    """A spec file: an existing path, else ``conf/table/<name>.yaml``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = spec_dir() / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"table spec {name_or_path!r}: no such file and not in {spec_dir()}; "
        f"shipped specs: {available_specs()}"
    )


def load_spec(name_or_path: str, quick: bool = False) -> TableSpec:
    path = find_spec(name_or_path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a table spec is a mapping with keys {sorted(KEYS)}")
    return parse_spec(data, name=path.stem, source=str(path), quick=quick)


def _fail(source: str, message: str) -> ValueError:
    return ValueError(f"{source}: {message}")


def _strings(value: Any, where: str, source: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
        raise _fail(source, f"{where} must be a list of key=value overrides, got {value!r}")
    return tuple(str(v) for v in value)


def _metric(entry: Any, source: str) -> Metric:
    if isinstance(entry, str):
        return Metric(entry)
    if not isinstance(entry, dict) or "key" not in entry:
        raise _fail(source, f"metrics: {entry!r} is neither a name nor a mapping with `key`")
    unknown = set(entry) - METRIC_KEYS
    if unknown:
        raise _fail(source, f"metrics: unknown key(s) {sorted(unknown)}; valid: "
                    f"{sorted(METRIC_KEYS)}")
    chance = entry.get("chance")
    if chance is not None and (isinstance(chance, bool) or not isinstance(chance, int | float)):
        raise _fail(source, f"metrics: chance of {entry['key']} must be a number, got {chance!r}")
    return Metric(str(entry["key"]), str(entry.get("label", "")),
                  float(entry.get("scale", 1.0)), int(entry.get("digits", 3)),
                  None if chance is None else float(chance))


def apply_quick(data: dict[str, Any], source: str = "spec") -> dict[str, Any]:
    """The spec with its ``quick`` part merged in (see the module docstring)."""
    quick = data.get("quick") or {}
    if not isinstance(quick, dict):
        raise _fail(source, f"quick must be a mapping, got {quick!r}")
    merged = {k: v for k, v in data.items() if k != "quick"}
    for key, value in quick.items():
        if key == "overrides":
            merged["overrides"] = [*(data.get("overrides") or []), *(value or [])]
        elif key == "columns":
            merged["columns"] = {**(data.get("columns") or {}), **(value or {})}
        else:
            merged[key] = value
    return merged


def parse_spec(data: dict[str, Any], name: str = "table", source: str = "spec",
               quick: bool = False) -> TableSpec:
    """Validate a spec mapping; each error names the key, the value and what is valid."""
    unknown = set(data) - KEYS
    if unknown:
        raise _fail(source, f"unknown key(s) {sorted(unknown)}; valid: {sorted(KEYS)}")
    if quick:
        data = apply_quick(data, source)
    rows_data = data.get("rows")
    if not isinstance(rows_data, dict) or not rows_data:
        raise _fail(source, "rows must be a non-empty mapping: row name -> "
                    "{experiment: <name>, overrides: [...]}")
    rows = []
    for row_name, body in rows_data.items():
        body = body or {}
        if isinstance(body, str):
            body = {"experiment": body}
        if not isinstance(body, dict) or set(body) - ROW_KEYS:
            raise _fail(source, f"rows.{row_name}: expected a mapping with keys "
                        f"{sorted(ROW_KEYS)}, got {body!r}")
        row = Row(str(row_name), body.get("experiment"),
                  _strings(body.get("overrides"), f"rows.{row_name}.overrides", source))
        if not row.train_overrides:
            raise _fail(source, f"rows.{row_name}: needs an experiment or overrides")
        rows.append(row)
    names = [r.name for r in rows]
    if len({slug(n) for n in names}) != len(names):
        raise _fail(source, f"row names {names} give the same directory name twice")
    baseline = str(data.get("baseline", names[0]))
    if baseline not in names:
        raise _fail(source, f"baseline {baseline!r} is not a row; rows: {names}")
    seeds = data.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise _fail(source, f"seeds must be a non-empty list of integers, got {seeds!r}")
    metrics_data = data.get("metrics")
    if not isinstance(metrics_data, list) or not metrics_data:
        raise _fail(source, "metrics must be a non-empty list (e.g. [test/acc])")
    metrics = tuple(_metric(m, source) for m in metrics_data)
    paired = data.get("paired_metrics")
    if paired is not None:
        keys = [m.key for m in metrics]
        bad = [p for p in paired if p not in keys]
        if bad:
            raise _fail(source, f"paired_metrics {bad} are not among metrics {keys}")
        paired = tuple(paired)
    jobs = data.get("jobs", 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise _fail(source, f"jobs must be an integer >= 1, got {jobs!r}")
    columns_data = data.get("columns")
    if columns_data is None:
        columns = (Column(""),)
    elif isinstance(columns_data, dict) and columns_data:
        columns = tuple(
            Column(str(k), _strings(v, f"columns.{k}", source)) for k, v in columns_data.items()
        )
    else:
        raise _fail(source, f"columns must be a mapping: column name -> overrides, got "
                    f"{columns_data!r}")
    contrast = data.get("column_contrast")
    if contrast is not None:
        names = [c.name for c in columns]
        if (not isinstance(contrast, list) or len(contrast) != 2
                or not all(str(c) in names for c in contrast) or contrast[0] == contrast[1]):
            raise _fail(source, f"column_contrast must name two different columns of {names}, "
                        f"got {contrast!r}")
        contrast = (str(contrast[0]), str(contrast[1]))
    bootstrap = data.get("paired_bootstrap")
    if bootstrap is not None:
        paired_keys = list(paired) if paired is not None else [
            m.key for m in metrics if not m.key.startswith("teacher/")]
        bootstrap = parse_bootstrap(bootstrap, paired_keys, source)
    teachers = data.get("teachers") or []
    row_names = [r.name for r in rows]
    if not isinstance(teachers, list) or any(str(t) not in row_names for t in teachers):
        raise _fail(source, f"teachers must be a list of row names (rows whose teacher is "
                    f"trained before the cells) among {row_names}, got {teachers!r}")
    return TableSpec(
        name=name,
        title=str(data.get("title", name)),
        rows=tuple(rows),
        baseline=baseline,
        seeds=tuple(seeds),
        metrics=metrics,
        paired_metrics=paired,
        jobs=jobs,
        overrides=_strings(data.get("overrides"), "overrides", source),
        column_axis=str(data.get("column_axis", "")),
        columns=columns,
        description=str(data.get("description", "")),
        source=source,
        curve=_metric(data["curve"], source) if data.get("curve") is not None else None,
        column_contrast=contrast,
        paired_bootstrap=bootstrap,
        teachers=tuple(str(t) for t in teachers),
    )


def spec_to_dict(spec: TableSpec) -> dict[str, Any]:
    """The spec as a mapping :func:`parse_spec` reads back (``quick`` already applied)."""
    data: dict[str, Any] = {
        "title": spec.title,
        "rows": {
            r.name: {
                **({"experiment": r.experiment} if r.experiment else {}),
                **({"overrides": list(r.overrides)} if r.overrides else {}),
            }
            for r in spec.rows
        },
        "baseline": spec.baseline,
        "seeds": list(spec.seeds),
        "metrics": [
            {"key": m.key, "label": m.label, "scale": m.scale, "digits": m.digits,
             **({"chance": m.chance} if m.chance is not None else {})}
            for m in spec.metrics
        ],
        "jobs": spec.jobs,
        "overrides": list(spec.overrides),
    }
    if spec.description:
        data["description"] = spec.description
    if spec.column_contrast is not None:
        data["column_contrast"] = list(spec.column_contrast)
    if spec.curve is not None:
        m = spec.curve
        data["curve"] = {"key": m.key, "label": m.label, "scale": m.scale, "digits": m.digits}
    if spec.paired_metrics is not None:
        data["paired_metrics"] = list(spec.paired_metrics)
    if spec.paired_bootstrap is not None:
        data["paired_bootstrap"] = spec.paired_bootstrap.to_dict()
    if spec.teachers:
        data["teachers"] = list(spec.teachers)
    if spec.columns != (Column(""),):
        data["column_axis"] = spec.column_axis
        data["columns"] = {c.name: list(c.overrides) for c in spec.columns}
    return data


def select_rows(spec: TableSpec, wanted: list[str]) -> TableSpec:
    """Only the rows named (by row name, its directory name or its experiment's last part);
    the baseline row is kept so that every row still gets its paired difference."""
    def matches(row: Row, key: str) -> bool:
        short = (row.experiment or "").rsplit("/", 1)[-1]
        return key in (row.name, slug(row.name), short)

    unknown = [w for w in wanted if not any(matches(r, w) for r in spec.rows)]
    if unknown:
        raise ValueError(f"--rows {unknown}: not rows of {spec.source or spec.name}; rows: "
                         f"{[r.name for r in spec.rows]}")
    keep = [r for r in spec.rows if r.name == spec.baseline or any(matches(r, w) for w in wanted)]
    kept = {r.name for r in keep}
    return replace(spec, rows=tuple(keep), teachers=tuple(t for t in spec.teachers if t in kept))
