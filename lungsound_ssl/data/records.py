"""Reader output: one ``ClipRecord`` per clip, before decoding.

Every supported layout (the take-home folder, ICBHI 2017 recordings, SPRSound
recordings) is turned into a list of ``ClipRecord`` by its reader. Decoding,
cleaning and caching are then shared (``lungsound_ssl.data.table``), so every
format yields the same clip table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Reasons a clip is left out of labelled training. Values are the strings
# written to data_report.json; users' scripts read them, so keep them stable.
FILE_MISSING = "file missing"
UNREADABLE = "unreadable or not audio"
ZERO_LENGTH = "zero length"
TOO_SHORT = "shorter than minimum duration"
SILENT = "digital silence"
NON_FINITE = "NaN or infinite samples"
CLIPPED = "heavy clipping"
DUPLICATE = "exact duplicate audio"
LABEL_CONFLICT = "label conflict"
UNKNOWN_LABEL = "unknown label value"
MISSING_LABEL = "missing label"
POOR_QUALITY = "poor recording quality"

# Reasons that also keep a clip out of self-supervised pretraining: there is
# no usable audio, or the audio is already present once.
AUDIO_REASONS = frozenset(
    {FILE_MISSING, UNREADABLE, ZERO_LENGTH, TOO_SHORT, SILENT, NON_FINITE, DUPLICATE}
)


@dataclass
class ClipRecord:
    """One clip as listed by a reader, before its audio is decoded.

    Attributes:
        clip_id: Unique id of the clip within its data folder. For one file per
            clip this is the file name relative to the audio folder
            (``clip_0001.wav``); for a clip cut from a longer recording it is
            ``<recording file>#<index>``.
        path: Audio file to read.
        start_s: Start of the clip within the file in seconds, or None for the
            whole file.
        end_s: End of the clip within the file in seconds, or None for the end.
        labels: ``(normal, wheeze, crackle)`` as 0/1, or None when the clip has
            no label (usable for pretraining only).
        exclusion: Reason the reader already knows for leaving the clip out of
            labelled training (one of the constants above), or None.
        attributes: Metadata carried through as clip attributes, e.g.
            ``patient_id``, ``recording_id``, ``device``, ``official_split``.
            Values are strings; a missing value is absent or ``""``.
    """

    clip_id: str
    path: Path
    start_s: float | None = None
    end_s: float | None = None
    labels: tuple[int, int, int] | None = None
    exclusion: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


def files_by_stem(paths: list[Path], kind: str) -> dict[str, Path]:
    """Map each file's stem (the recording name) to its path.

    Raises:
        ValueError: if two files share a stem, naming both, because the
            recording they belong to would be ambiguous.
    """
    by_stem: dict[str, Path] = {}
    for path in paths:
        if path.stem in by_stem:
            raise ValueError(
                f"two {kind} files for recording {path.stem}: {by_stem[path.stem]} and {path}; "
                "keep one of them"
            )
        by_stem[path.stem] = path
    return by_stem
