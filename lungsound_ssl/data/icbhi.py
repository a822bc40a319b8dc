"""Reader for the ICBHI 2017 Respiratory Sound Database in its original layout.

Each recording ``<patient>_<index>_<location>_<mode>_<device>.wav`` comes with
a ``.txt`` file of the same stem that lists its respiratory cycles, one per
line: ``start_s end_s crackles wheezes``, tab or space separated, with the two
flags 0 or 1. Every cycle becomes one ``ClipRecord`` cut from the recording.
Audio and annotation files are matched by stem anywhere under the data folder,
so both the flat release folder and separate audio/annotation folders work.

Two optional challenge files add attributes when found in the data folder or
its parent (or when passed explicitly):

- ``ICBHI_challenge_train_test.txt``: ``<recording> <train|test>`` per line,
  stored as ``official_split``.
- ``ICBHI_Challenge_diagnosis.txt``: ``<patient> <diagnosis>`` per line,
  stored as ``diagnosis``.

Files that do not match each other are kept visible rather than dropped:

- An annotation file without its recording yields its cycles with exclusion
  ``FILE_MISSING``, so the data report counts them by label.
- A recording without an annotation file yields one unlabelled record for
  the whole file with exclusion ``MISSING_LABEL``. Its audio stays usable
  for self-supervised pretraining.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from pathlib import Path

from lungsound_ssl.data.records import FILE_MISSING, MISSING_LABEL, ClipRecord, files_by_stem

logger = logging.getLogger(__name__)

# Recording names as the database documents them, e.g. 101_1b1_Al_sc_Meditron:
# patient number, recording index, chest location (trachea Tc; anterior,
# posterior or lateral, left or right), acquisition mode (single or multi
# channel) and device. The device is taken as written because early copies
# of the database call some AKGC417L and LittC2SE recordings "Meditron".
ICBHI_NAME_PATTERN = re.compile(
    r"^(?P<patient_id>\d+)_(?P<recording_index>\d+[a-z]\d+)_"
    r"(?P<chest_location>Tc|Al|Ar|Pl|Pr|Ll|Lr)_(?P<acquisition_mode>sc|mc)_"
    r"(?P<device>[A-Za-z0-9]+)$"
)
ICBHI_NAME_FORMAT = "<patient>_<index>_<location>_<mode>_<device>"

SPLIT_FILE_NAME = "ICBHI_challenge_train_test.txt"
DIAGNOSIS_FILE_NAME = "ICBHI_Challenge_diagnosis.txt"

_SPLIT_VALUES = ("train", "test")


def parse_icbhi_name(stem: str) -> dict[str, str] | None:
    """Split an ICBHI recording name into its attributes, or return None if it is not one.

    Returns:
        ``patient_id``, ``recording_index``, ``chest_location``,
        ``acquisition_mode`` and ``device``, as written in the name.
    """
    match = ICBHI_NAME_PATTERN.match(stem)
    return match.groupdict() if match else None


def parse_icbhi_annotation(path: str | Path) -> list[tuple[float, float, int, int]]:
    """Parse one ICBHI annotation file into its respiratory cycles.

    Blank lines and surrounding whitespace are ignored.

    Returns:
        One ``(start_s, end_s, crackles, wheezes)`` tuple per cycle, in file order.

    Raises:
        ValueError: naming the file and line number of an invalid line. A line
            is invalid when it does not have four fields or a time is not a
            finite number. It is also invalid when a flag is not 0 or 1, the
            start is negative or the end is not after the start.
    """
    path = Path(path)
    cycles: list[tuple[float, float, int, int]] = []
    # utf-8-sig so that a byte-order mark left by a Windows editor is not read as part of a number.
    with path.open(encoding="utf-8-sig") as file:
        for line_number, line in enumerate(file, start=1):
            fields = line.split()
            if not fields:
                continue
            cycles.append(_parse_cycle_line(fields, f"{path}:{line_number}", line.strip()))
    return cycles


def _parse_cycle_line(fields: list[str], where: str, line: str) -> tuple[float, float, int, int]:
    fix = "correct or delete this line"
    if len(fields) != 4:
        raise ValueError(
            f"{where}: expected 4 fields 'start end crackles wheezes', found {len(fields)} "
            f"in {line!r}; {fix}"
        )

    try:
        start_s, end_s = float(fields[0]), float(fields[1])
    except ValueError:
        raise ValueError(
            f"{where}: start and end must be numbers in seconds, found {line!r}; {fix}"
        ) from None
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise ValueError(f"{where}: start and end must be finite, found {line!r}; {fix}")
    if start_s < 0:
        raise ValueError(f"{where}: negative start {start_s} s in {line!r}; {fix}")
    if end_s <= start_s:
        raise ValueError(
            f"{where}: end {end_s} s is not after start {start_s} s in {line!r}; {fix}"
        )

    if fields[2] not in ("0", "1") or fields[3] not in ("0", "1"):
        raise ValueError(
            f"{where}: crackles and wheezes flags must be 0 or 1, found {fields[2]!r} and "
            f"{fields[3]!r}; {fix}"
        )
    return start_s, end_s, int(fields[2]), int(fields[3])


def _read_two_column_file(path: Path, line_format: str) -> list[tuple[int, str, str]]:
    """Read ``<key> <value>`` lines as (line number, key, value); the value may contain spaces."""
    rows = []
    with path.open(encoding="utf-8-sig") as file:
        for line_number, line in enumerate(file, start=1):
            fields = line.split(maxsplit=1)
            if not fields:
                continue
            if len(fields) != 2:
                raise ValueError(
                    f"{path}:{line_number}: expected '{line_format}', found {line.strip()!r}; "
                    "correct or delete this line"
                )
            rows.append((line_number, fields[0], fields[1].strip()))
    return rows


def read_split_file(path: str | Path) -> dict[str, str]:
    """Read the challenge split file into a map from recording name to ``train`` or ``test``.

    Raises:
        ValueError: naming the file and line number for a line that is not
            ``<recording> <train|test>``.
    """
    path = Path(path)
    split_by_recording: dict[str, str] = {}
    for line_number, recording, split in _read_two_column_file(path, "<recording> <train|test>"):
        split = split.lower()
        if split not in _SPLIT_VALUES:
            raise ValueError(
                f"{path}:{line_number}: split must be 'train' or 'test', found {split!r}; "
                "correct or delete this line"
            )
        split_by_recording[recording] = split
    return split_by_recording


def read_diagnosis_file(path: str | Path) -> dict[str, str]:
    """Read the challenge diagnosis file into a map from patient number to diagnosis.

    Raises:
        ValueError: naming the file and line number for a line that is not
            ``<patient> <diagnosis>``.
    """
    path = Path(path)
    rows = _read_two_column_file(path, "<patient> <diagnosis>")
    return {patient: diagnosis for _, patient, diagnosis in rows}


def find_challenge_file(data_dir: Path, name: str) -> Path | None:
    """Find a challenge file by name (case-insensitive) in ``data_dir`` or its parent."""
    for folder in (data_dir, data_dir.parent):
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.iterdir()):
            if candidate.is_file() and candidate.name.lower() == name.lower():
                return candidate
    return None


def find_icbhi_files(data_dir: str | Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Find annotation and audio files named like ICBHI recordings anywhere under ``data_dir``.

    Returns:
        ``(annotations, recordings)``: maps from recording name to its ``.txt``
        and ``.wav`` file. File suffixes are matched case-insensitively.

    Raises:
        ValueError: if two files of one kind share a recording name.
    """
    annotation_paths: list[Path] = []
    audio_paths: list[Path] = []
    for path in sorted(Path(data_dir).rglob("*")):
        suffix = path.suffix.lower()
        if suffix not in (".txt", ".wav") or not path.is_file():
            continue
        if parse_icbhi_name(path.stem) is None:
            continue
        (annotation_paths if suffix == ".txt" else audio_paths).append(path)
    return files_by_stem(annotation_paths, "annotation"), files_by_stem(audio_paths, "audio")


def _official_split(
    recording: str, split_by_recording: dict[str, str], split_by_prefix: dict[str, str]
) -> str | None:
    split = split_by_recording.get(recording)
    if split is not None:
        return split
    split = split_by_prefix.get(recording.rsplit("_", 1)[0])
    if split is not None:
        logger.debug("ICBHI recording %s found in the split file under another device", recording)
    return split


def _split_lookup(split_by_recording: dict[str, str]) -> dict[str, str]:
    """Map the name without its device to the split, for names that are unique that way.

    The challenge split file may spell a recording with its early device name
    (``..._Meditron``) while the audio carries the corrected one, or the other
    way round. Patient, index, location and mode still identify the recording.
    """
    by_prefix: dict[str, list[str]] = defaultdict(list)
    for recording, split in split_by_recording.items():
        by_prefix[recording.rsplit("_", 1)[0]].append(split)
    return {prefix: splits[0] for prefix, splits in by_prefix.items() if len(splits) == 1}


def read_icbhi(
    data_dir: str | Path,
    *,
    split_file: str | Path | None = None,
    diagnosis_file: str | Path | None = None,
) -> list[ClipRecord]:
    """List every respiratory cycle of an ICBHI 2017 folder as a ``ClipRecord``.

    Args:
        data_dir: Folder searched recursively for ``<recording>.txt`` and
            ``<recording>.wav`` files named ``<patient>_<index>_<location>_<mode>_<device>``.
        split_file: Challenge split file; looked up by its standard name in
            ``data_dir`` and its parent when None.
        diagnosis_file: Challenge diagnosis file; looked up the same way when None.

    Returns:
        Records ordered by recording name, then cycle. A cycle's ``clip_id``
        is ``<recording>.wav#<line number among the cycles, from 1>``.

    Raises:
        FileNotFoundError: if ``data_dir`` or a given split or diagnosis file does not exist.
        ValueError: if no annotation file is found, or an annotation, split or
            diagnosis file has a malformed line (the message names file and line).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"ICBHI data folder not found: {data_dir}")

    annotations, recordings = find_icbhi_files(data_dir)
    if not annotations:
        raise ValueError(
            f"no ICBHI annotation files named {ICBHI_NAME_FORMAT}.txt found under {data_dir}; "
            "point --data_dir at the folder of the ICBHI 2017 recordings and annotations"
        )

    split_by_recording, diagnosis_by_patient = _read_challenge_files(
        data_dir, split_file, diagnosis_file
    )
    split_by_prefix = _split_lookup(split_by_recording)

    records: list[ClipRecord] = []
    cycles_without_audio = 0
    recordings_without_split: list[str] = []
    for recording in sorted(set(annotations) | set(recordings)):
        attributes = parse_icbhi_name(recording)
        attributes["recording_id"] = recording
        if split_by_recording:
            split = _official_split(recording, split_by_recording, split_by_prefix)
            if split is None:
                recordings_without_split.append(recording)
            else:
                attributes["official_split"] = split
        if attributes["patient_id"] in diagnosis_by_patient:
            attributes["diagnosis"] = diagnosis_by_patient[attributes["patient_id"]]

        audio_path = recordings.get(recording)
        if recording not in annotations:
            logger.debug("ICBHI recording %s has no annotation file", audio_path)
            attributes["exclusion_detail"] = f"no {recording}.txt annotation"
            records.append(
                ClipRecord(
                    clip_id=f"{recording}.wav",
                    path=audio_path,
                    exclusion=MISSING_LABEL,
                    attributes=attributes,
                )
            )
            continue

        annotation_path = annotations[recording]
        if audio_path is None:
            # Expected place of the audio, so the report shows where it was looked for.
            audio_path = annotation_path.with_suffix(".wav")
        cycles = parse_icbhi_annotation(annotation_path)
        exclusion = None if recording in recordings else FILE_MISSING
        if exclusion is not None:
            cycles_without_audio += len(cycles)
        records.extend(_cycle_records(recording, audio_path, cycles, attributes, exclusion))

    _log_summary(data_dir, annotations, recordings, records, cycles_without_audio)
    if recordings_without_split:
        logger.warning(
            "%d ICBHI recordings are not in the split file and have no official_split, e.g. %s",
            len(recordings_without_split),
            recordings_without_split[0],
        )
    return records


def _cycle_records(
    recording: str,
    audio_path: Path,
    cycles: list[tuple[float, float, int, int]],
    recording_attributes: dict[str, str],
    exclusion: str | None,
) -> list[ClipRecord]:
    records = []
    for cycle_index, (start_s, end_s, crackles, wheezes) in enumerate(cycles, start=1):
        normal = int(not crackles and not wheezes)
        records.append(
            ClipRecord(
                clip_id=f"{recording}.wav#{cycle_index}",
                path=audio_path,
                start_s=start_s,
                end_s=end_s,
                labels=(normal, wheezes, crackles),
                exclusion=exclusion,
                attributes={**recording_attributes, "cycle_index": str(cycle_index)},
            )
        )
    return records


def _read_challenge_files(
    data_dir: Path, split_file: str | Path | None, diagnosis_file: str | Path | None
) -> tuple[dict[str, str], dict[str, str]]:
    found = []
    for given_path, name in ((split_file, SPLIT_FILE_NAME), (diagnosis_file, DIAGNOSIS_FILE_NAME)):
        if given_path is None:
            found.append(find_challenge_file(data_dir, name))
            continue
        given_path = Path(given_path)
        if not given_path.is_file():
            raise FileNotFoundError(f"ICBHI file not found: {given_path}; pass an existing {name}")
        found.append(given_path)

    split_path, diagnosis_path = found
    split_by_recording = read_split_file(split_path) if split_path else {}
    diagnosis_by_patient = read_diagnosis_file(diagnosis_path) if diagnosis_path else {}
    logger.info(
        "ICBHI split file: %s; diagnosis file: %s",
        split_path or "none found",
        diagnosis_path or "none found",
    )
    return split_by_recording, diagnosis_by_patient


def _log_summary(
    data_dir: Path,
    annotations: dict[str, Path],
    recordings: dict[str, Path],
    records: list[ClipRecord],
    cycles_without_audio: int,
) -> None:
    logger.info(
        "ICBHI %s: %d annotation files, %d recordings, %d cycles",
        data_dir,
        len(annotations),
        len(recordings),
        sum(1 for record in records if record.labels is not None),
    )
    if cycles_without_audio:
        missing = len(set(annotations) - set(recordings))
        logger.warning(
            "%d ICBHI annotation files have no matching .wav; their %d cycles are marked '%s'",
            missing,
            cycles_without_audio,
            FILE_MISSING,
        )
    unannotated = [record.clip_id for record in records if record.exclusion == MISSING_LABEL]
    if unannotated:
        logger.warning(
            "%d ICBHI recordings have no annotation .txt and are kept unlabelled, e.g. %s",
            len(unannotated),
            unannotated[0],
        )
