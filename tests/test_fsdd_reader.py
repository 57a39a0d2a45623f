"""FSDD reader on tiny generated recordings in the real layout: names, waveforms, and one
clear error naming each bad file (bad name, unknown digit / speaker, empty, wrong sample
rate, stereo, missing)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile

from crossdistill.data.readers.fsdd import (
    FsddFormatError,
    FsddRecording,
    read_recordings,
    recordings_dir,
    scan_fsdd,
)

TINY_SPEAKERS = ("alice", "bob", "carl")


def tone(digit: int, speaker: int, index: int, seconds: float = 0.25, rate: int = 8000):
    """A digit-dependent tone (200 + 150 * digit Hz) with a speaker-dependent overtone."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * (200 + 150 * digit) * t)
    wave += 0.1 * np.sin(2 * np.pi * (1000 + 300 * speaker + 7 * index) * t)
    return wave.astype(np.float32)


def write_fsdd(
    root: Path,
    speakers: Sequence[str] = TINY_SPEAKERS,
    indices: int = 6,
    with_speakers_json: bool = True,
) -> Path:
    """``root/recordings/{digit}_{speaker}_{index}.wav`` (8 kHz mono 16-bit), 10 digits."""
    folder = root / "recordings"
    folder.mkdir(parents=True, exist_ok=True)
    for s, speaker in enumerate(speakers):
        for digit in range(10):
            for index in range(indices):
                seconds = 0.2 + 0.02 * ((digit + index) % 4)  # lengths differ
                soundfile.write(
                    folder / f"{digit}_{speaker}_{index}.wav",
                    tone(digit, s, index, seconds),
                    8000,
                    subtype="PCM_16",
                )
    if with_speakers_json:
        (root / "speakers.json").write_text(json.dumps({s: {"gender": "?"} for s in speakers}))
    return root


def test_scan_and_read_the_layout(tmp_path):
    root = write_fsdd(tmp_path, indices=2)
    recordings = scan_fsdd(root)
    assert len(recordings) == 3 * 10 * 2
    first = recordings[0]
    assert (first.speaker, first.digit, first.index) == ("alice", 0, 0)
    assert first.path == root / "recordings" / "0_alice_0.wav"
    assert [r.name for r in recordings[:3]] == ["0_alice_0", "0_alice_1", "1_alice_0"]
    # the recordings folder itself works as the root too
    assert scan_fsdd(root / "recordings") == recordings
    waves = read_recordings(recordings[:2])
    assert waves[0].dtype == np.float32 and len(waves[0]) == int(0.2 * 8000)
    expected = tone(0, 0, 0, 0.2)
    assert np.abs(waves[0] - expected).max() < 1e-3  # 16-bit quantisation


def test_speakers_come_from_speakers_json_or_the_argument(tmp_path):
    root = write_fsdd(tmp_path, indices=1)
    (root / "recordings" / "3_dave_0.wav").write_bytes(
        (root / "recordings" / "3_bob_0.wav").read_bytes()
    )
    with pytest.raises(FsddFormatError, match=r"3_dave_0.wav: unknown speaker 'dave'"):
        scan_fsdd(root)
    assert len(scan_fsdd(root, speakers=[*TINY_SPEAKERS, "dave"])) == 31
    (root / "speakers.json").unlink()  # no list: any speaker name is valid
    assert {r.speaker for r in scan_fsdd(root)} == {*TINY_SPEAKERS, "dave"}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("three_alice_0.wav", r"three_alice_0.wav: unknown digit 'three' \(valid: 0-9\)"),
        ("12_alice_0.wav", r"12_alice_0.wav: unknown digit '12'"),
        ("3-alice-0.wav", r"3-alice-0.wav: name does not match \{digit\}_\{speaker\}_\{index\}"),
        ("3_alice_x.wav", r"3_alice_x.wav: index 'x' is not a non-negative integer"),
    ],
)
def test_bad_names_fail_naming_the_file(tmp_path, name, message):
    root = write_fsdd(tmp_path, indices=1)
    (root / "recordings" / name).write_bytes((root / "recordings" / "3_alice_0.wav").read_bytes())
    with pytest.raises(FsddFormatError, match=message):
        scan_fsdd(root)


def test_bad_files_fail_in_one_error_naming_each_file(tmp_path):
    root = write_fsdd(tmp_path, indices=1)
    folder = root / "recordings"
    (folder / "0_alice_0.wav").write_bytes(b"")
    soundfile.write(folder / "1_alice_0.wav", tone(1, 0, 0), 16000, subtype="PCM_16")
    soundfile.write(folder / "2_alice_0.wav", np.stack([tone(2, 0, 0)] * 2, 1), 8000)
    (folder / "3_alice_0.wav").write_bytes(b"RIFF0000WAVEjunk")
    recordings = scan_fsdd(root)
    (folder / "4_alice_0.wav").unlink()  # disappears between scan and read
    with pytest.raises(FsddFormatError) as err:
        read_recordings(recordings)
    text = str(err.value)
    assert text.startswith(f"{folder}: 5 bad recording file(s): ")
    assert "0_alice_0.wav: empty file" in text
    assert "1_alice_0.wav: sample rate 16000 Hz, expected 8000 Hz" in text
    assert "2_alice_0.wav: 2 channels, expected mono" in text
    assert "3_alice_0.wav: cannot read wav" in text
    assert "4_alice_0.wav: cannot read wav (FileNotFoundError" in text


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"FSDD folder .*nowhere does not exist"):
        scan_fsdd(tmp_path / "nowhere")
    (tmp_path / "recordings").mkdir()
    with pytest.raises(FsddFormatError, match=r"no \{digit\}_\{speaker\}_\{index\}.wav"):
        scan_fsdd(tmp_path)
    assert recordings_dir(tmp_path) == tmp_path / "recordings"


def test_recording_fields():
    rec = FsddRecording(Path("/x/7_bob_12.wav"), 7, "bob", 12)
    assert rec.name == "7_bob_12"
