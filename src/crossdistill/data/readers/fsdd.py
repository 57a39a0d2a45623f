"""Free Spoken Digit Dataset (FSDD) layout: ``<root>/recordings/{digit}_{speaker}_{index}.wav``.

``root`` is the dataset folder (holding ``recordings/`` and, optionally, ``speakers.json``)
or the ``recordings`` folder itself. Every recording is 8 kHz mono PCM. Validation is strict
and collected: :func:`scan_fsdd` checks every file name (digit 0-9, a known speaker when
the speakers are known, a non-negative index) and :func:`read_recordings` every file's
header and samples (exists, not empty, the expected sample rate, one channel). All problems
found are reported in ONE :class:`FsddFormatError` that names each bad file (first 10 and the
count) and what would be valid; nothing is skipped silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

SAMPLE_RATE = 8000
NAME_PATTERN = re.compile(r"^(?P<digit>[^_]+)_(?P<speaker>[^_]+)_(?P<index>[^_]+)\.wav$")
DIGITS = tuple(str(d) for d in range(10))
MAX_LISTED = 10


class FsddFormatError(ValueError):
    """Bad FSDD files (the message names every bad file and what is wrong)."""


@dataclass(frozen=True)
class FsddRecording:
    """One recording: its file and what its name says."""

    path: Path
    digit: int
    speaker: str
    index: int

    @property
    def name(self) -> str:
        return self.path.stem


def recordings_dir(root: str | Path) -> Path:
    """``root/recordings`` when it exists, else ``root`` (already the recordings folder)."""
    root = Path(root).expanduser()
    if (root / "recordings").is_dir():
        return root / "recordings"
    if root.is_dir():
        return root
    raise FileNotFoundError(
        f"FSDD folder {root} does not exist; point data.fsdd_root at the dataset folder "
        "(holding recordings/{digit}_{speaker}_{index}.wav), see docs/avmnist.md"
    )


def known_speakers(root: str | Path) -> list[str] | None:
    """The speakers listed in ``speakers.json`` beside ``recordings/`` (None if absent)."""
    folder = recordings_dir(root)
    for candidate in (folder.parent / "speakers.json", folder / "speakers.json"):
        if candidate.is_file():
            try:
                return sorted(json.loads(candidate.read_text()))
            except (json.JSONDecodeError, TypeError) as err:
                raise FsddFormatError(f"{candidate}: not a JSON object of speakers: {err}") from err
    return None


def _raise_if_bad(problems: list[str], folder: Path, what: str) -> None:
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise FsddFormatError(f"{folder}: {len(problems)} bad {what}: {listed}{more}")


def parse_name(path: Path, speakers: Sequence[str] | None) -> FsddRecording | str:
    """The recording named by ``path``, or a one-line problem naming the file."""
    match = NAME_PATTERN.match(path.name)
    if match is None:
        return f"{path.name}: name does not match {{digit}}_{{speaker}}_{{index}}.wav"
    digit, speaker, index = match["digit"], match["speaker"], match["index"]
    if digit not in DIGITS:
        return f"{path.name}: unknown digit {digit!r} (valid: 0-9)"
    if speakers is not None and speaker not in speakers:
        return f"{path.name}: unknown speaker {speaker!r} (valid: {list(speakers)})"
    if not index.isdigit():
        return f"{path.name}: index {index!r} is not a non-negative integer"
    return FsddRecording(path, int(digit), speaker, int(index))


def scan_fsdd(root: str | Path, speakers: Sequence[str] | None = None) -> list[FsddRecording]:
    """Every ``*.wav`` recording under ``root`` sorted by (speaker, digit, index).

    ``speakers``: the valid speaker names (None: those of ``speakers.json`` when present,
    else any name). Files that are not ``.wav`` are ignored; a bad ``.wav`` name raises.
    """
    folder = recordings_dir(root)
    valid = list(speakers) if speakers is not None else known_speakers(root)
    parsed = [parse_name(p, valid) for p in sorted(folder.glob("*.wav"))]
    _raise_if_bad([p for p in parsed if isinstance(p, str)], folder, "recording name(s)")
    recordings = [p for p in parsed if isinstance(p, FsddRecording)]
    if not recordings:
        raise FsddFormatError(f"{folder}: no {{digit}}_{{speaker}}_{{index}}.wav recordings")
    return sorted(recordings, key=lambda r: (r.speaker, r.digit, r.index))


def _read_one(path: Path, sample_rate: int) -> np.ndarray | str:
    try:
        if path.stat().st_size == 0:
            return f"{path.name}: empty file"
        samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError) as err:
        return f"{path.name}: cannot read wav ({type(err).__name__}: {err})"
    if rate != sample_rate:
        return f"{path.name}: sample rate {rate} Hz, expected {sample_rate} Hz"
    if samples.shape[1] != 1:
        return f"{path.name}: {samples.shape[1]} channels, expected mono"
    if samples.shape[0] == 0:
        return f"{path.name}: no samples"
    return samples[:, 0]


def read_recordings(
    recordings: Sequence[FsddRecording], sample_rate: int = SAMPLE_RATE
) -> list[np.ndarray]:
    """The float32 waveforms (in [-1, 1]) of ``recordings``; every bad file is reported in
    one :class:`FsddFormatError`."""
    waves = [_read_one(r.path, sample_rate) for r in recordings]
    problems = [w for w in waves if isinstance(w, str)]
    folder = recordings[0].path.parent if recordings else Path(".")
    _raise_if_bad(problems, folder, "recording file(s)")
    return [w for w in waves if isinstance(w, np.ndarray)]
