"""Job status records of a multirun and the sweep summary built from them.

Every multirun job writes ``status.json`` into its job dir (from the job's own process, so
this works for the basic, joblib and submitit launchers alike); at the end of the sweep the
summary is built from those files: jobs without one were killed or never started the task.
"""

from __future__ import annotations

import csv
import io
import json
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

STATUS_FILE = "status.json"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
OK, FAILED, UNFINISHED = "ok", "failed", "unfinished"


@dataclass
class JobStatus:
    """One multirun job: its number, overrides, outcome, the error's last line, run dir."""

    job: int | None
    overrides: list[str] = field(default_factory=list)
    status: str = OK
    error: str = ""
    run_dir: str = ""


def error_line(error: BaseException) -> str:
    """The last line of the error's traceback, e.g. ``ValueError: bad value``."""
    lines = traceback.format_exception_only(type(error), error)
    return " ".join(lines[-1].split()) if lines else type(error).__name__


def write_status(job_dir: Path, record: JobStatus) -> Path:
    """Write ``record`` as ``<job_dir>/status.json`` (temp file + rename)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / STATUS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2))
    tmp.replace(path)
    return path


def read_status(job_dir: Path) -> JobStatus:
    """The job's ``status.json``; a job dir without one is ``unfinished`` (killed, or it
    failed before the task ran), its overrides read from Hydra's ``.hydra/overrides.yaml``."""
    path = job_dir / STATUS_FILE
    if path.is_file():
        return JobStatus(**json.loads(path.read_text()))
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    job = int(job_dir.name) if job_dir.name.isdigit() else None
    return JobStatus(job, list(overrides or []), UNFINISHED, "no status.json", str(job_dir))


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job dirs: sub-dirs holding ``status.json`` or ``.hydra/overrides.yaml``."""
    if not sweep_dir.is_dir():
        return []
    return [
        path for path in sweep_dir.iterdir()
        if (path / STATUS_FILE).is_file() or (path / ".hydra" / "overrides.yaml").is_file()
    ]


def collect_statuses(sweep_dir: Path) -> list[JobStatus]:
    """Every job's status, ordered by job number."""
    records = [read_status(path) for path in job_dirs(sweep_dir)]
    return sorted(records, key=lambda r: (r.job is None, r.job or 0, r.run_dir))


def failed_jobs(records: list[JobStatus]) -> list[JobStatus]:
    return [r for r in records if r.status != OK]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summary_markdown(records: list[JobStatus]) -> str:
    n_failed = len(failed_jobs(records))
    lines = [
        f"Sweep summary: {len(records)} jobs, {len(records) - n_failed} ok, {n_failed} failed",
        "",
        "| job | status | overrides | error | run dir |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        job = "" if r.job is None else str(r.job)
        lines.append(f"| {job} | {r.status} | {_cell(' '.join(r.overrides))} | "
                     f"{_cell(r.error)} | {r.run_dir} |")
    return "\n".join(lines) + "\n"


def summary_csv(records: list[JobStatus]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["job", "status", "overrides", "error", "run_dir"])
    for r in records:
        writer.writerow([r.job, r.status, " ".join(r.overrides), r.error, r.run_dir])
    return out.getvalue()


def write_summary(sweep_dir: Path) -> tuple[str, list[JobStatus]]:
    """Write ``summary.md`` and ``summary.csv`` into the sweep dir; return the markdown and
    the records."""
    records = collect_statuses(sweep_dir)
    text = summary_markdown(records)
    (sweep_dir / SUMMARY_MD).write_text(text)
    (sweep_dir / SUMMARY_CSV).write_text(summary_csv(records))
    return text, records
