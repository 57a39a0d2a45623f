"""The VoxCeleb-style on-disk layout (the built-in synthetic generator writes exactly this)::

    <root>/wav/<identity>/<video>/<utterance>.wav        # e.g. id10001/1zcIwhmdeo4/00001.wav
    <face_root>/<identity>/<video>/<frame>.jpg|png       # face crops, default <root>/faces
    trial list: "<label 1|0> <enroll> <test>" per line, paths relative to <root>/wav
                (like VoxCeleb1's veri_test2.txt)
    identity lists (optional split files): one identity per line

and the scanned index of such a folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

AUDIO_EXTS = (".wav",)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
WAV_LAYOUT = ("<root>/wav/<identity>/<video>/<utterance>.wav "
              "(e.g. <root>/wav/id10001/1zcIwhmdeo4/00001.wav)")
FACE_LAYOUT = "<face_root>/<identity>/<video>/<frame>.jpg|png (default face_root: <root>/faces)"


@dataclass(frozen=True)
class Utterance:
    path: str  # relative to the wav root, "/"-separated
    identity: str
    video: str
    num_frames: int = -1  # at the native rate; -1 = not read yet
    native_rate: int = -1


@dataclass
class VoxCelebIndex:
    """The scanned, validated data: utterances plus face frames per identity/video."""

    wav_root: Path
    face_root: Path
    utterances: list[Utterance]
    faces: dict[str, dict[str, list[str]]]  # identity -> video -> absolute frame paths
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def identities(self) -> list[str]:
        return sorted({u.identity for u in self.utterances})

    def by_identity(self) -> dict[str, list[Utterance]]:
        out: dict[str, list[Utterance]] = {}
        for u in self.utterances:
            out.setdefault(u.identity, []).append(u)
        return out

    def face_frames(self, identity: str, video: str) -> list[str]:
        """Frames of the same video when it has any, else all frames of the identity."""
        vids = self.faces.get(identity, {})
        if vids.get(video):
            return vids[video]
        return [p for v in sorted(vids) for p in vids[v]]


def resolve_wav_root(root: str | Path) -> Path:
    """``<root>/wav`` (or ``root`` itself if it directly holds identity folders)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"VoxCeleb root not found: {root} (expected layout {WAV_LAYOUT})")
    if (root / "wav").is_dir():
        return root / "wav"
    if has_identity_layout(root):
        return root
    raise FileNotFoundError(f"no audio folder at {root / 'wav'} (expected layout {WAV_LAYOUT})")


def resolve_face_root(root: str | Path, face_root: str | Path | None) -> Path:
    path = Path(face_root).expanduser() if face_root else Path(root).expanduser() / "faces"
    if not path.is_dir():
        raise FileNotFoundError(f"face root not found: {path} (expected layout {FACE_LAYOUT})")
    return path


def has_identity_layout(root: Path) -> bool:
    """True if ``root/<identity>/<video>/*.wav`` exists."""
    videos = (video for ident in list_subdirs(root) for video in list_subdirs(ident))
    return any(list_files(video, AUDIO_EXTS) for video in videos)


def list_subdirs(path: Path) -> list[Path]:
    return sorted(e for e in (Path(d.path) for d in os.scandir(path))
                  if e.is_dir() and not e.name.startswith("."))


def list_files(path: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(Path(d.path) for d in os.scandir(path)
                  if d.is_file() and not d.name.startswith(".") and d.name.lower().endswith(exts))


