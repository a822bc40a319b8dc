"""Read the take-home layout: a folder with ``train/`` clips and ``train.csv``.

``train.csv`` names one clip per row and gives its labels either as one-hot
columns ``normal,wheeze,crackle`` (0/1) or as a single label column
(``normal``, ``wheeze``, ``crackle``, ``both``, ``wheeze+crackle``, ...).
Extra columns, and the columns of an optional ``metadata.csv`` beside it, are
carried through as clip attributes (``patient_id``, ``recording_id``,
``device``, ``official_split``, ...). Clips found in ``train/`` but absent
from ``train.csv`` are kept as unlabeled clips for pretraining.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lungsound_ssl.data import records as R
from lungsound_ssl.labels import LABELS, UnknownLabelError, has_label_conflict, parse_label_string

logger = logging.getLogger(__name__)

LABEL_FILE = "train.csv"
METADATA_FILE = "metadata.csv"
AUDIO_DIR = "train"
AUDIO_SUFFIXES = (".wav", ".flac")
FILE_COLUMNS = ("filename", "file", "file_name", "path", "fname")
LABEL_COLUMNS = ("label", "labels", "class", "diagnosis", "annotation")


def _find_column(columns, candidates, path: Path, what: str) -> str:
    lowered = {str(c).strip().lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise ValueError(
        f"{path}: no {what} column found among {list(columns)}; "
        f"name it one of: {', '.join(candidates)}"
    )


def normalise_file_key(name: str) -> str:
    """Turn a file-column value into the clip id: no ``train/`` prefix, with a suffix.

    ``"train/clip_0001"``, ``"clip_0001.wav"`` and ``"./clip_0001"`` all map to
    ``"clip_0001.wav"``; a ``.flac`` suffix is kept.
    """
    key = str(name).strip().replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    if key.startswith(f"{AUDIO_DIR}/"):
        key = key[len(AUDIO_DIR) + 1 :]
    if not key.lower().endswith(AUDIO_SUFFIXES):
        key = f"{key}.wav"
    return key


def _resolve_audio(audio_dir: Path, key: str) -> Path:
    path = audio_dir / key
    if path.exists():
        return path
    # A name listed without a suffix may be a FLAC file.
    stem = path.with_suffix("")
    for suffix in AUDIO_SUFFIXES:
        if stem.with_suffix(suffix).exists():
            return stem.with_suffix(suffix)
    return path


def _parse_flag(value) -> int | None:
    """Parse a one-hot cell: 0/1, True/False, 0.0/1.0. Returns None for anything else."""
    if isinstance(value, bool):
        return int(value)
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "yes"):
        return 1
    if text in ("0", "0.0", "false", "no"):
        return 0
    return None


def _row_labels(row: pd.Series, onehot_columns: list[str] | None, label_column: str | None):
    """Return ``(labels, exclusion, detail)`` for one CSV row."""
    if onehot_columns is not None:
        cells = [row[c] for c in onehot_columns]
        if all(pd.isna(c) or str(c).strip() == "" for c in cells):
            return None, R.MISSING_LABEL, "no label value"
        flags = [_parse_flag(c) for c in cells]
        if any(f is None for f in flags):
            return None, R.UNKNOWN_LABEL, f"one-hot values {cells} are not 0/1"
        labels = tuple(flags)
    else:
        value = row[label_column]
        if pd.isna(value) or str(value).strip() == "":
            return None, R.MISSING_LABEL, "no label value"
        try:
            labels = parse_label_string(str(value))
        except UnknownLabelError as error:
            return None, R.UNKNOWN_LABEL, str(error)

    if not any(labels):
        return None, R.MISSING_LABEL, "no label set to 1"
    if has_label_conflict(*labels):
        return labels, R.LABEL_CONFLICT, "normal together with wheeze or crackle"
    return labels, None, ""


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path}: cannot parse as CSV ({error}); expected a header row with a file column "
            f"({', '.join(FILE_COLUMNS)}) and either columns {','.join(LABELS)} or a label column"
        ) from error


def read_takehome(data_dir: str | Path) -> list[R.ClipRecord]:
    """List the clips of a take-home folder with their labels and attributes.

    Raises:
        FileNotFoundError: if ``data_dir``, its ``train.csv`` or ``train/`` is missing.
        ValueError: if ``train.csv`` cannot be parsed or lacks the file or label columns.
    """
    data_dir = Path(data_dir)
    label_path = data_dir / LABEL_FILE
    audio_dir = data_dir / AUDIO_DIR
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}; pass an existing folder to --data_dir")
    if not label_path.is_file():
        raise FileNotFoundError(
            f"label file not found: {label_path}; the take-home layout needs {LABEL_FILE} "
            f"(columns: filename plus {','.join(LABELS)} or a label column) beside {AUDIO_DIR}/"
        )
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio folder not found: {audio_dir}; put the clips listed in {label_path} there")

    table = _read_csv(label_path)
    if table.empty:
        raise ValueError(f"{label_path}: no rows; list one clip per row")
    file_column = _find_column(table.columns, FILE_COLUMNS, label_path, "file name")

    lowered = {str(c).strip().lower(): c for c in table.columns}
    if all(name in lowered for name in LABELS):
        onehot_columns, label_column = [lowered[name] for name in LABELS], None
    else:
        onehot_columns = None
        label_column = _find_column(
            table.columns, LABEL_COLUMNS, label_path, f"label (or one-hot {','.join(LABELS)})"
        )
    label_columns = set(onehot_columns or [label_column])

    table["_key"] = table[file_column].map(normalise_file_key)
    metadata = _read_metadata(data_dir / METADATA_FILE)

    records: list[R.ClipRecord] = []
    seen: set[str] = set()
    for _, row in table.iterrows():
        key = row["_key"]
        if key in seen:
            logger.warning("%s lists %s more than once; keeping the first row", label_path, key)
            continue
        seen.add(key)

        attributes = {
            str(c).strip().lower(): str(row[c]).strip()
            for c in table.columns
            if c not in label_columns and c not in (file_column, "_key") and not pd.isna(row[c])
        }
        attributes.update(metadata.get(key, {}))

        labels, exclusion, detail = _row_labels(row, onehot_columns, label_column)
        if exclusion is not None:
            attributes["exclusion_detail"] = detail
        path = _resolve_audio(audio_dir, key)
        if not path.exists():
            exclusion = R.FILE_MISSING
        records.append(R.ClipRecord(key, path, labels=labels, exclusion=exclusion, attributes=attributes))

    unlisted = sorted(
        p for p in audio_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.name not in seen
    )
    if unlisted:
        logger.info("%d clips in %s are not in %s; using them unlabeled", len(unlisted), audio_dir, label_path)
    for path in unlisted:
        attributes = dict(metadata.get(path.name, {}))
        attributes["exclusion_detail"] = f"not listed in {LABEL_FILE}"
        records.append(R.ClipRecord(path.name, path, exclusion=R.MISSING_LABEL, attributes=attributes))
    return records


def _read_metadata(path: Path) -> dict[str, dict[str, str]]:
    """Read ``metadata.csv`` into ``{clip id: {column: value}}``; empty when absent."""
    if not path.is_file():
        return {}
    table = _read_csv(path)
    file_column = _find_column(table.columns, FILE_COLUMNS, path, "file name")
    metadata = {}
    for _, row in table.iterrows():
        metadata[normalise_file_key(row[file_column])] = {
            str(c).strip().lower(): str(row[c]).strip()
            for c in table.columns
            if c != file_column and not pd.isna(row[c])
        }
    logger.info("read metadata for %d clips from %s", len(metadata), path)
    return metadata
