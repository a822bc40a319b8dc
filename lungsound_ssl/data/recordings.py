"""Cut whole recordings into fixed-length, overlapping, unlabelled crops for pretraining.

ICBHI and SPRSound recordings last 10 to 90 s, while their labelled clips
(cycles, events) cover only parts of them. Self-supervised pretraining can
use all of the audio: each recording is cut into crops of ``crop_seconds``,
one every ``hop_seconds``. When the last regular crop stops before the end of
the recording, one more crop ending exactly at the end is added, so every
sample falls in at least one crop. A recording shorter than ``crop_seconds``
gives one crop covering the whole file.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import soundfile

from lungsound_ssl.data.records import (
    FILE_MISSING,
    MISSING_LABEL,
    POOR_QUALITY,
    UNREADABLE,
    ZERO_LENGTH,
    ClipRecord,
)
from lungsound_ssl.data.sprsound import PRETRAIN_ALLOWED

logger = logging.getLogger(__name__)

# Exclusions that concern the whole file rather than one slice of it.
_FILE_REASONS = frozenset({FILE_MISSING, UNREADABLE, ZERO_LENGTH})

# Attributes that describe one labelled clip rather than its recording. A
# recording with a single clip would otherwise pass them on to its crops.
_CLIP_ATTRIBUTES = frozenset({"cycle_index", "event_type", "exclusion_detail"})

# Crop starts are named in whole milliseconds, so two crops must start at least 1 ms apart.
_MIN_HOP_SECONDS = 0.001


def crop_starts_s(duration_s: float, crop_seconds: float, hop_seconds: float) -> list[float]:
    """Return the start times in seconds of the crops of one recording."""
    if duration_s <= crop_seconds:
        return [0.0]
    # The small tolerance keeps a crop that ends exactly at the end despite float rounding.
    count = math.floor((duration_s - crop_seconds) / hop_seconds + 1e-9) + 1
    starts = [index * hop_seconds for index in range(count)]
    uncovered_s = duration_s - (starts[-1] + crop_seconds)
    if uncovered_s > _MIN_HOP_SECONDS:
        starts.append(duration_s - crop_seconds)
    return starts


def _group_by_path(
    records_or_paths: Iterable[ClipRecord | str | Path],
) -> dict[Path, tuple[str, list[ClipRecord]]]:
    """Group the input by audio file, with the name used in crop ids."""
    groups: dict[Path, tuple[str, list[ClipRecord]]] = {}
    for item in records_or_paths:
        if isinstance(item, ClipRecord):
            path = Path(item.path)
            # The recording part of "<recording file>#<index>", or the whole id for a whole file.
            name = item.clip_id.split("#", 1)[0]
        else:
            path = Path(item)
            name = path.name
        name_and_records = groups.setdefault(path, (name, []))
        if isinstance(item, ClipRecord):
            name_and_records[1].append(item)

    paths_by_name: dict[str, Path] = {}
    for path, (name, _) in groups.items():
        if name in paths_by_name:
            raise ValueError(
                f"two recordings would get the crop id prefix {name!r}: {paths_by_name[name]} "
                f"and {path}; give the files distinct names"
            )
        paths_by_name[name] = path
    return groups


def _shared_attributes(records: list[ClipRecord], path: Path) -> dict[str, str]:
    """Return the attributes every record of a recording agrees on (patient, device, ...).

    Per-clip attributes such as ``cycle_index`` or ``event_type`` are dropped.
    """
    if not records:
        return {"recording_id": path.stem}
    shared = {
        key: value for key, value in records[0].attributes.items() if key not in _CLIP_ATTRIBUTES
    }
    for record in records[1:]:
        shared = {
            key: value for key, value in shared.items() if record.attributes.get(key) == value
        }
    shared.setdefault("recording_id", path.stem)
    return shared


def _is_pretraining_allowed(records: list[ClipRecord]) -> bool:
    return not any(
        record.attributes.get(PRETRAIN_ALLOWED) == "0" or record.exclusion in _FILE_REASONS
        for record in records
    )


def _duration_s(
    path: Path, durations: Mapping[str | Path, float] | None
) -> tuple[float | None, str | None]:
    """Return ``(duration_s, None)``, or ``(None, exclusion)`` when the file cannot be measured."""
    if durations is not None:
        for key in (path, str(path)):
            if key in durations:
                return float(durations[key]), None
    if not path.is_file():
        return None, FILE_MISSING
    try:
        info = soundfile.info(str(path))
    except soundfile.LibsndfileError as error:
        logger.warning("cannot read %s as audio: %s", path, error)
        return None, UNREADABLE
    return info.frames / info.samplerate, None


def crop_recordings(
    records_or_paths: Iterable[ClipRecord | str | Path],
    crop_seconds: float,
    hop_seconds: float,
    durations: Mapping[str | Path, float] | None = None,
) -> list[ClipRecord]:
    """Cut each distinct recording into overlapping unlabelled crops.

    Args:
        records_or_paths: Records from a reader (several records of one file
            give one set of crops) or paths to audio files.
        crop_seconds: Length of each crop.
        hop_seconds: Time between the starts of two consecutive crops.
        durations: Length in seconds per file, keyed by path. Files not listed
            are measured with ``soundfile.info``.

    Returns:
        Crops with ``labels`` None and ``clip_id`` ``<recording file>@<start in ms>``.
        Each crop keeps the attributes shared by all records of its file
        (``recording_id``, ``patient_id``, ...), and ``POOR_QUALITY`` when
        every record of the file has that exclusion. A file that is missing,
        unreadable or empty gives one record with that exclusion. Recordings
        whose records forbid pretraining (``pretrain_allowed`` is ``"0"``) or
        already lack audio are skipped.

    Raises:
        ValueError: if a length is not positive, or two files would share a crop id.
    """
    if not crop_seconds > 0:
        raise ValueError(f"crop_seconds must be positive, got {crop_seconds}")
    if not hop_seconds >= _MIN_HOP_SECONDS:
        raise ValueError(f"hop_seconds must be at least {_MIN_HOP_SECONDS} s, got {hop_seconds}")

    crops: list[ClipRecord] = []
    skipped = 0
    for path, (name, records) in _group_by_path(records_or_paths).items():
        if not _is_pretraining_allowed(records):
            skipped += 1
            continue
        attributes = _shared_attributes(records, path)
        # Crops carry no labels, so label problems of the clips do not apply to them.
        # Poor quality concerns the whole recording and stays visible in the report.
        # A crop without labels is not usable for labelled training either way.
        is_poor_quality = bool(records) and all(r.exclusion == POOR_QUALITY for r in records)
        exclusion = POOR_QUALITY if is_poor_quality else MISSING_LABEL

        duration_s, problem = _duration_s(path, durations)
        if problem is None and duration_s <= 0:
            problem = ZERO_LENGTH
        if problem is not None:
            crops.append(ClipRecord(f"{name}@0", path, exclusion=problem, attributes=attributes))
            continue

        for start_s in crop_starts_s(duration_s, crop_seconds, hop_seconds):
            crops.append(
                ClipRecord(
                    clip_id=f"{name}@{round(start_s * 1000)}",
                    path=path,
                    start_s=start_s,
                    end_s=min(start_s + crop_seconds, duration_s),
                    exclusion=exclusion,
                    attributes=dict(attributes),
                )
            )

    logger.info(
        "cut %d crops of %.2f s (hop %.2f s) from recordings; %d recordings skipped "
        "(no audio or pretraining not allowed)",
        len(crops),
        crop_seconds,
        hop_seconds,
        skipped,
    )
    return crops
