"""Finding every utterance and face frame of a VoxCeleb-layout folder, checked per the
``on_bad_file`` policy."""

from __future__ import annotations

import logging
from pathlib import Path

import soundfile as sf

from crossdistill.data.readers.voxceleb.bad_files import BadFileLog
from crossdistill.data.readers.voxceleb.layout import (
    AUDIO_EXTS,
    FACE_LAYOUT,
    IMAGE_EXTS,
    WAV_LAYOUT,
    Utterance,
    VoxCelebIndex,
    list_files,
    list_subdirs,
    resolve_face_root,
    resolve_wav_root,
)
from crossdistill.data.readers.voxceleb.media import check_rate, image_problem
from crossdistill.utils.fingerprint import remembered

log = logging.getLogger(__name__)
_wav_headers: dict[tuple, tuple[int, int]] = {}  # settled_stat_key -> (frames, sample rate)


def _read_header(path: Path) -> tuple[int, int]:
    info = sf.info(str(path))
    return int(info.frames), int(info.samplerate)


def _frames_and_rate(path: Path) -> tuple[int, int]:
    """A WAV's length and sample rate from its header, read once per process while the
    file's stat stays the same (the seeds of a multirun scan the same files)."""
    return remembered(_wav_headers, path, _read_header)


def scan_voxceleb(root: str | Path, face_root: str | Path | None = None, *,
                  sample_rate: int = 16000, resample: bool = True, on_bad_file: str = "raise",
                  validate_files: bool = True) -> VoxCelebIndex:
    """Find all utterances and face frames; check them per ``on_bad_file``.

    With ``validate_files`` every WAV header is read (corrupt / empty files, sample rate)
    and every image is opened and verified; otherwise problems surface when a file is
    loaded (always as an error naming the file). A WAV at another sample rate is accepted
    only with ``resample=True``. Identities without any usable face frame are bad data too.
    """
    bad = BadFileLog(on_bad_file)
    wav_root = resolve_wav_root(root)
    face_dir = resolve_face_root(root, face_root)

    utts: list[Utterance] = []
    other_rate = 0
    for ident in list_subdirs(wav_root):
        for video in list_subdirs(ident):
            for f in list_files(video, AUDIO_EXTS):
                rel = f.relative_to(wav_root).as_posix()
                n, sr = -1, -1
                if validate_files:
                    try:
                        n, sr = _frames_and_rate(f)
                    except Exception as e:  # noqa: BLE001 - libsndfile raises various types
                        bad.report(f, f"corrupt or unreadable WAV ({type(e).__name__}: {e})")
                        continue
                    if n <= 0:
                        bad.report(f, "empty WAV (0 samples)")
                        continue
                    if sr != sample_rate:
                        check_rate(f, sr, sample_rate, resample)
                        other_rate += 1
                utts.append(Utterance(rel, ident.name, video.name, n, sr))
    if not utts and not bad.skipped:
        raise FileNotFoundError(f"no .wav files under {wav_root} (expected layout {WAV_LAYOUT})")
    if other_rate:
        log.info("%d WAV file(s) are not at %d Hz and will be resampled", other_rate, sample_rate)

    faces: dict[str, dict[str, list[str]]] = {}
    wanted = {u.identity for u in utts}
    for ident in list_subdirs(face_dir):
        if ident.name not in wanted:
            continue
        for video in list_subdirs(ident):
            frames = []
            for f in list_files(video, IMAGE_EXTS):
                if validate_files:
                    reason = image_problem(f)
                    if reason:
                        bad.report(f, reason)
                        continue
                frames.append(str(f))
            if frames:
                faces.setdefault(ident.name, {})[video.name] = frames

    no_face = set(wanted - set(faces))
    for ident in sorted(no_face):
        bad.report(face_dir / ident, "identity has utterances but no usable face frame "
                   f"(expected {FACE_LAYOUT}); its utterances are skipped")
    if no_face:
        bad.skipped.extend((str(wav_root / u.path), "identity has no face frames")
                           for u in utts if u.identity in no_face)
        utts = [u for u in utts if u.identity not in no_face]
    bad.log_summary(str(wav_root.parent))
    return VoxCelebIndex(wav_root, face_dir, utts, faces, bad.skipped)

