"""Recognise which supported layout a data folder has, and read it into ClipRecords.

Layouts:

- ``takehome``: a ``train/`` folder of clips beside ``train.csv``, or beside
  any ``.csv`` whose header has a file-name column.
- ``icbhi``: ICBHI 2017 annotation files
  ``<patient>_<index>_<location>_<mode>_<device>.txt``, with or without their
  ``.wav`` recordings, anywhere under the folder.
- ``sprsound``: SPRSound ``.json`` annotations with a ``record_annotation``
  (or ``recording_annotation``) key anywhere under the folder.
"""

from __future__ import annotations

import csv
import logging
from itertools import islice
from pathlib import Path

from lungsound_ssl.data.icbhi import ICBHI_NAME_FORMAT, find_icbhi_files, read_icbhi
from lungsound_ssl.data.records import ClipRecord
from lungsound_ssl.data.sprsound import (
    SPRSoundOptions,
    is_sprsound_annotation,
    read_sprsound,
)

logger = logging.getLogger(__name__)

DATA_FORMATS = ("takehome", "icbhi", "sprsound")

# JSON files opened while detecting SPRSound. A few are enough to recognise the
# layout without reading every annotation of a large release twice.
_MAX_JSON_PROBES = 20

_LOOKED_FOR = {
    "takehome": "a train/ folder beside train.csv or a .csv with a file name column",
    "icbhi": f"ICBHI annotation files named {ICBHI_NAME_FORMAT}.txt (with or without .wav)",
    "sprsound": ".json files with a 'record_annotation' or 'recording_annotation' key",
}


def _csv_has_file_column(path: Path) -> bool:
    # The take-home reader's own list, so detection accepts exactly the tables it can read.
    from lungsound_ssl.data.takehome import FILE_COLUMNS

    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            header = next(csv.reader(file), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return any(column.strip().lower() in FILE_COLUMNS for column in header)


def _is_takehome(data_dir: Path) -> bool:
    if not (data_dir / "train").is_dir():
        return False
    if (data_dir / "train.csv").is_file():
        return True
    return any(_csv_has_file_column(path) for path in sorted(data_dir.glob("*.csv")))


def _is_icbhi(data_dir: Path) -> bool:
    annotations, _ = find_icbhi_files(data_dir)
    return bool(annotations)


def _is_sprsound(data_dir: Path) -> bool:
    json_paths = (path for path in sorted(data_dir.rglob("*.json")) if path.is_file())
    return any(is_sprsound_annotation(path) for path in islice(json_paths, _MAX_JSON_PROBES))


_DETECTORS = {"takehome": _is_takehome, "icbhi": _is_icbhi, "sprsound": _is_sprsound}


def detect_format(data_dir: str | Path) -> str:
    """Return the layout of ``data_dir``, one of ``DATA_FORMATS``.

    Raises:
        FileNotFoundError: if ``data_dir`` is not a folder.
        ValueError: if no layout or more than one layout matches; the message
            lists what was looked for and suggests ``--data_format``.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}; pass an existing --data_dir")

    matches = [name for name in DATA_FORMATS if _DETECTORS[name](data_dir)]
    if len(matches) == 1:
        logger.info("data folder %s has the %s layout", data_dir, matches[0])
        return matches[0]

    looked_for = "; ".join(f"{name}: {_LOOKED_FOR[name]}" for name in DATA_FORMATS)
    if not matches:
        raise ValueError(
            f"no supported data layout found in {data_dir}. Looked for {looked_for}. "
            f"Point --data_dir at such a folder, or pass --data_format "
            f"({', '.join(DATA_FORMATS)}) to force one"
        )
    raise ValueError(
        f"{data_dir} matches more than one data layout ({', '.join(matches)}); "
        f"pass --data_format with one of them, or point --data_dir at a folder with one dataset"
    )


def read_records(
    data_dir: str | Path,
    data_format: str = "auto",
    sprsound_options: SPRSoundOptions | None = None,
) -> tuple[str, list[ClipRecord]]:
    """Read a data folder of any supported layout into ClipRecords.

    Args:
        data_dir: The data folder.
        data_format: ``"auto"`` to detect the layout, or one of ``DATA_FORMATS``.
        sprsound_options: Label mapping for SPRSound; defaults when None.

    Returns:
        ``(data_format, records)`` with the layout that was read.

    Raises:
        ValueError: if ``data_format`` is unknown, detection fails, or the
            reader rejects the folder.
    """
    if data_format not in ("auto", *DATA_FORMATS):
        raise ValueError(
            f"unknown data format {data_format!r}; use auto or one of {', '.join(DATA_FORMATS)}"
        )
    if data_format == "auto":
        data_format = detect_format(data_dir)

    data_dir = Path(data_dir)
    if data_format == "takehome":
        # Imported on use, so reading ICBHI or SPRSound never imports the take-home reader.
        from lungsound_ssl.data.takehome import read_takehome

        records = read_takehome(data_dir)
    elif data_format == "icbhi":
        records = read_icbhi(data_dir)
    else:
        records = read_sprsound(data_dir, sprsound_options)
    return data_format, records
