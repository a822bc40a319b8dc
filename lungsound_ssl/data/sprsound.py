"""Reader for SPRSound (SJTU Paediatric Respiratory Sound Database) recordings.

Each recording ``<patient>_<age>_<sex>_<location>_<recording>.wav`` has a JSON
file of the same stem, in the same folder or a separate one, such as::

    {"record_annotation": "DAS",
     "event_annotation": [{"start": "1251", "end": "2674", "type": "Fine Crackle"}]}

The record key is also accepted as ``recording_annotation``. Event times are
milliseconds, written as strings or numbers. Every event becomes one
``ClipRecord``. Event types map to ``(normal, wheeze, crackle)`` as follows:

- ``Normal``: normal.
- ``Fine Crackle`` and ``Coarse Crackle``: crackle.
- ``Wheeze``: wheeze.
- ``Wheeze+Crackle``: wheeze and crackle.
- ``Rhonchi`` and ``Stridor``: wheeze, because both are continuous
  adventitious sounds like wheezes. Each mapping can be switched off, and
  then such events are left out of labelled training as ``UNKNOWN_LABEL``.

A recording annotated ``Poor Quality`` yields one unlabelled record for the
whole file with exclusion ``POOR_QUALITY``. Its audio may still serve
self-supervised pretraining. When ``use_poor_quality_for_pretraining`` is off,
the record carries the attribute ``pretrain_allowed = "0"``, and consumers
(the clip table, ``crop_recordings``) must leave its audio out as well.
Records left out of labelled training state why in the attribute
``exclusion_detail``, e.g. the unmapped event type.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungsound_ssl.data.records import (
    FILE_MISSING,
    MISSING_LABEL,
    POOR_QUALITY,
    UNKNOWN_LABEL,
    ClipRecord,
    files_by_stem,
)

logger = logging.getLogger(__name__)

# Attribute set to "0" on records whose audio must not be used for pretraining.
PRETRAIN_ALLOWED = "pretrain_allowed"

RECORD_ANNOTATION_KEYS = ("record_annotation", "recording_annotation")
EVENT_ANNOTATION_KEY = "event_annotation"
POOR_QUALITY_ANNOTATION = "Poor Quality"

# Event types after lower-casing and removing whitespace. labels.parse_label_string
# does not cover these names ("Fine Crackle", "Rhonchi"), hence a table of our own.
_EVENT_LABELS: dict[str, tuple[int, int, int]] = {
    "normal": (1, 0, 0),
    "finecrackle": (0, 0, 1),
    "coarsecrackle": (0, 0, 1),
    "wheeze": (0, 1, 0),
    "wheeze+crackle": (0, 1, 1),
}
_RHONCHI = "rhonchi"
_STRIDOR = "stridor"


@dataclass
class SPRSoundOptions:
    """Options that turn SPRSound annotations into clip labels and pretraining audio."""

    rhonchi_as_wheeze: bool = field(
        default=True,
        metadata={
            "help": "Label SPRSound Rhonchi events as wheeze (both are continuous adventitious "
            "sounds). When false, Rhonchi events are left out of labelled training."
        },
    )
    stridor_as_wheeze: bool = field(
        default=True,
        metadata={
            "help": "Label SPRSound Stridor events as wheeze (both are continuous adventitious "
            "sounds). When false, Stridor events are left out of labelled training."
        },
    )
    use_poor_quality_for_pretraining: bool = field(
        default=True,
        metadata={
            "help": "Use the audio of SPRSound recordings annotated 'Poor Quality' for "
            "self-supervised pretraining. They are never used for labelled training."
        },
    )


def event_labels(event_type: str, options: SPRSoundOptions) -> tuple[int, int, int] | None:
    """Map an SPRSound event type to ``(normal, wheeze, crackle)``.

    Returns:
        The labels, or None for a type that is unknown or whose mapping the
        options switch off.
    """
    key = re.sub(r"\s+", "", event_type.lower())
    if key == _RHONCHI:
        return (0, 1, 0) if options.rhonchi_as_wheeze else None
    if key == _STRIDOR:
        return (0, 1, 0) if options.stridor_as_wheeze else None
    return _EVENT_LABELS.get(key)


def parse_sprsound_name(stem: str) -> dict[str, str] | None:
    """Split ``<patient>_<age>_<sex>_<location>_<recording>`` into attributes, or return None.

    Returns:
        ``patient_id``, ``age``, ``sex`` and ``chest_location`` as written in
        the name (sex is a code such as ``0`` or ``1``), or None when the name
        does not have five non-empty fields.
    """
    fields = stem.split("_")
    if len(fields) != 5 or not all(fields):
        return None
    patient_id, age, sex, chest_location, _ = fields
    return {"patient_id": patient_id, "age": age, "sex": sex, "chest_location": chest_location}


def load_sprsound_annotation(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """Read one SPRSound JSON file.

    Returns:
        ``(record_annotation, events)`` with the events as written in the file.

    Raises:
        ValueError: naming the file and the fix when it is not valid JSON, lacks
            the record or event key, or the events are not a list of objects.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig") as file:
            content = json.load(file)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or remove the file") from None

    if not isinstance(content, dict):
        # ValueError, not TypeError: the file's content is invalid, not the argument.
        raise ValueError(  # noqa: TRY004
            f"{path} must contain a JSON object with 'record_annotation' and 'event_annotation'"
        )

    present = [key for key in RECORD_ANNOTATION_KEYS if key in content]
    if not present:
        raise ValueError(
            f"{path} has no 'record_annotation' (or 'recording_annotation') key; add it with "
            "Normal, CAS, DAS, CAS & DAS or Poor Quality"
        )
    values = {str(content[key]).strip() for key in present}
    if len(values) > 1:
        raise ValueError(
            f"{path} has both 'record_annotation' and 'recording_annotation' with different "
            f"values {sorted(values)}; keep one of them"
        )
    record_annotation = values.pop()

    if EVENT_ANNOTATION_KEY not in content:
        raise ValueError(
            f"{path} has no 'event_annotation' key; add it as a list of "
            "{'start', 'end', 'type'} objects (an empty list when there are no events)"
        )
    events = content[EVENT_ANNOTATION_KEY]
    if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
        raise ValueError(
            f"{path}: 'event_annotation' must be a list of {{'start', 'end', 'type'}} objects"
        )
    return record_annotation, events


def _event_times_s(event: dict[str, Any], where: str) -> tuple[float, float]:
    """Return an event's start and end in seconds from its millisecond fields."""
    times_ms = []
    for key in ("start", "end"):
        try:
            value = float(event[key])
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: '{key}' must be a number of milliseconds, found {event[key]!r}"
            ) from None
        if not math.isfinite(value):
            raise ValueError(f"{where}: '{key}' must be finite, found {event[key]!r}")
        times_ms.append(value)

    start_ms, end_ms = times_ms
    if start_ms < 0:
        raise ValueError(f"{where}: negative start {start_ms} ms; correct the event")
    if end_ms <= start_ms:
        raise ValueError(
            f"{where}: end {end_ms} ms is not after start {start_ms} ms; correct the event"
        )
    return start_ms / 1000.0, end_ms / 1000.0


def is_sprsound_annotation(path: Path) -> bool:
    """Return True when a JSON file parses and has an SPRSound record key."""
    try:
        with path.open(encoding="utf-8-sig") as file:
            content = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(content, dict) and any(key in content for key in RECORD_ANNOTATION_KEYS)


def find_sprsound_files(data_dir: str | Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Find SPRSound annotation and audio files anywhere under ``data_dir``, matched by stem.

    A JSON file counts as an annotation when a ``.wav`` of the same stem exists
    (it must then be valid) or when it has a record annotation key. Other JSON
    files are ignored.

    Returns:
        ``(annotations, recordings)``: maps from recording name to its ``.json``
        and ``.wav`` file.

    Raises:
        ValueError: if two files of one kind share a recording name.
    """
    json_paths: list[Path] = []
    wav_paths: list[Path] = []
    for path in sorted(Path(data_dir).rglob("*")):
        suffix = path.suffix.lower()
        if suffix == ".json" and path.is_file():
            json_paths.append(path)
        elif suffix == ".wav" and path.is_file():
            wav_paths.append(path)

    recordings = files_by_stem(wav_paths, "audio")
    annotation_paths = []
    for path in json_paths:
        if path.stem in recordings or is_sprsound_annotation(path):
            annotation_paths.append(path)
        else:
            logger.info(
                "ignoring %s: not an SPRSound annotation and no .wav of the same name", path
            )
    return files_by_stem(annotation_paths, "annotation"), recordings


def read_sprsound(data_dir: str | Path, options: SPRSoundOptions | None = None) -> list[ClipRecord]:
    """List every annotated event of an SPRSound folder as a ``ClipRecord``.

    Args:
        data_dir: Folder searched recursively for ``.wav`` files and their
            same-named ``.json`` annotations.
        options: Label mapping and pretraining choices; defaults when None.

    Returns:
        Records ordered by recording name, then by event order in the JSON file.
        An event's ``clip_id`` is ``<recording>.wav#<event index, from 1>``. A
        whole-recording record (Poor Quality, no events, or no JSON file) has
        ``clip_id`` ``<recording>.wav`` and no start or end.

    Raises:
        FileNotFoundError: if ``data_dir`` does not exist.
        ValueError: if no annotation is found, or a JSON file or event is
            malformed (the message names the file and the fix).
    """
    options = options or SPRSoundOptions()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"SPRSound data folder not found: {data_dir}")

    annotations, recordings = find_sprsound_files(data_dir)
    if not annotations:
        raise ValueError(
            f"no SPRSound JSON annotations (with 'record_annotation' and 'event_annotation') "
            f"found under {data_dir}; point --data_dir at the folder of the SPRSound .wav and "
            ".json files"
        )

    records: list[ClipRecord] = []
    unparsed_names: list[str] = []
    for recording in sorted(set(annotations) | set(recordings)):
        attributes = parse_sprsound_name(recording)
        if attributes is None:
            unparsed_names.append(recording)
            attributes = {"patient_id": recording.split("_")[0]}
        attributes["recording_id"] = recording
        audio_path = recordings.get(recording)

        if recording not in annotations:
            logger.debug("SPRSound recording %s has no JSON annotation", audio_path)
            attributes["exclusion_detail"] = f"no {recording}.json annotation"
            records.append(
                ClipRecord(
                    f"{recording}.wav", audio_path, exclusion=MISSING_LABEL, attributes=attributes
                )
            )
            continue

        annotation_path = annotations[recording]
        if audio_path is None:
            audio_path = annotation_path.with_suffix(".wav")
        recording_records = _recording_records(
            recording, audio_path, annotation_path, attributes, options
        )
        if recording not in recordings:
            # A missing file outranks label reasons: there is no audio for any use.
            for record in recording_records:
                record.exclusion = FILE_MISSING
        records.extend(recording_records)

    if unparsed_names:
        logger.warning(
            "%d SPRSound file names do not follow <patient>_<age>_<sex>_<location>_<recording>, "
            "e.g. %s; their patient id is the text before the first '_'",
            len(unparsed_names),
            unparsed_names[0],
        )
    _log_summary(data_dir, annotations, recordings, records)
    return records


def _recording_records(
    recording: str,
    audio_path: Path,
    annotation_path: Path,
    recording_attributes: dict[str, str],
    options: SPRSoundOptions,
) -> list[ClipRecord]:
    """Turn one recording's annotation into its event records (or one whole-recording record)."""
    record_annotation, events = load_sprsound_annotation(annotation_path)
    attributes = {**recording_attributes, "record_annotation": record_annotation}

    if _normalise(record_annotation) == _normalise(POOR_QUALITY_ANNOTATION):
        if events:
            logger.warning(
                "%s is annotated Poor Quality; its %d events are ignored",
                annotation_path,
                len(events),
            )
        attributes["exclusion_detail"] = f"record_annotation is {record_annotation!r}"
        if not options.use_poor_quality_for_pretraining:
            attributes[PRETRAIN_ALLOWED] = "0"
        return [
            ClipRecord(
                f"{recording}.wav", audio_path, exclusion=POOR_QUALITY, attributes=attributes
            )
        ]

    if not events:
        logger.debug("%s is annotated %r but lists no events", annotation_path, record_annotation)
        attributes["exclusion_detail"] = "annotation lists no events"
        return [
            ClipRecord(
                f"{recording}.wav", audio_path, exclusion=MISSING_LABEL, attributes=attributes
            )
        ]

    records = []
    for event_index, event in enumerate(events, start=1):
        where = f"{annotation_path} event {event_index}"
        for key in ("start", "end", "type"):
            if key not in event:
                raise ValueError(
                    f"{where} has no '{key}'; every event needs start and end in ms and a type"
                )
        start_s, end_s = _event_times_s(event, where)
        event_type = str(event["type"]).strip()
        labels = event_labels(event_type, options)
        event_attributes = {**attributes, "event_type": event_type}
        if labels is None:
            event_attributes["exclusion_detail"] = f"event type {event_type!r} has no label"
        records.append(
            ClipRecord(
                clip_id=f"{recording}.wav#{event_index}",
                path=audio_path,
                start_s=start_s,
                end_s=end_s,
                labels=labels,
                exclusion=None if labels is not None else UNKNOWN_LABEL,
                attributes=event_attributes,
            )
        )
    return records


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def _log_summary(
    data_dir: Path,
    annotations: dict[str, Path],
    recordings: dict[str, Path],
    records: list[ClipRecord],
) -> None:
    exclusions = Counter(record.exclusion for record in records if record.exclusion)
    logger.info(
        "SPRSound %s: %d annotations, %d recordings, %d records, left out of labelled training: %s",
        data_dir,
        len(annotations),
        len(recordings),
        len(records),
        dict(exclusions) or "none",
    )
    for exclusion in (FILE_MISSING, MISSING_LABEL):
        excluded = [record for record in records if record.exclusion == exclusion]
        if excluded:
            logger.warning(
                "%d SPRSound records are marked '%s', e.g. %s (%s)",
                len(excluded),
                exclusion,
                excluded[0].clip_id,
                excluded[0].attributes.get("exclusion_detail", excluded[0].path),
            )
    unmapped = Counter(
        record.attributes["event_type"] for record in records if record.exclusion == UNKNOWN_LABEL
    )
    for event_type, count in sorted(unmapped.items()):
        logger.warning(
            "%d SPRSound events of type %r have no label (unknown type or mapping switched off)",
            count,
            event_type,
        )
