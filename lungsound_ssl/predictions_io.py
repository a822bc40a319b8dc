"""Read and write a fold's predictions.csv, one row per held-out clip.

The column names below are a contract between the fine-tuning run, which
writes the file, and the cross-validation summary, which reads it. Label
columns follow ``LABELS`` (normal, wheeze, crackle). ``group`` (the id the
folds were grouped by, usually the patient) and ``device`` are optional.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lungsound_ssl.labels import LABELS

FILENAME_COLUMN = "filename"
TRUE_COLUMNS: tuple[str, ...] = tuple(f"true_{label}" for label in LABELS)
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{label}" for label in LABELS)
PRED_COLUMNS: tuple[str, ...] = tuple(f"pred_{label}" for label in LABELS)
GROUP_COLUMN = "group"
DEVICE_COLUMN = "device"

REQUIRED_COLUMNS: tuple[str, ...] = (FILENAME_COLUMN, *TRUE_COLUMNS, *PROB_COLUMNS, *PRED_COLUMNS)
OPTIONAL_COLUMNS: tuple[str, ...] = (GROUP_COLUMN, DEVICE_COLUMN)


@dataclass
class FoldPredictions:
    """Predictions for the held-out clips of one fold.

    Attributes:
        filenames: Clip ids, shape (N,).
        y_true: True labels as 0/1 in ``LABELS`` order, shape (N, 3).
        probs: Predicted probabilities, shape (N, 3).
        y_pred: Decoded predicted labels as 0/1, shape (N, 3).
        groups: Group id per clip (usually the patient), or None when the file
            has no group column.
        devices: Recording device per clip, or None when the file has no
            device column. A missing value is ``""``.
    """

    filenames: np.ndarray
    y_true: np.ndarray
    probs: np.ndarray
    y_pred: np.ndarray
    groups: np.ndarray | None = None
    devices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.filenames)


def _as_text_column(values: Sequence | None, n_rows: int, name: str) -> list[str] | None:
    if values is None:
        return None
    values = list(values)
    if len(values) != n_rows:
        raise ValueError(f"{name} has {len(values)} values but there are {n_rows} clips")
    return ["" if _is_missing(v) else str(v) for v in values]


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_predictions(
    path: str | Path,
    filenames: Sequence[str],
    y_true: np.ndarray,
    probs: np.ndarray,
    y_pred: np.ndarray,
    groups: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
) -> Path:
    """Write predictions.csv with the contract columns and return its path.

    Args:
        path: File to write.
        filenames: Clip id per row, length N.
        y_true: True labels, shape (N, 3) in ``LABELS`` order.
        probs: Probabilities, shape (N, 3).
        y_pred: Decoded labels, shape (N, 3).
        groups: Optional group id per clip (written as ``group``).
        devices: Optional device per clip (written as ``device``).

    Raises:
        ValueError: if an array does not have N rows of 3 columns.
    """
    n_rows = len(filenames)
    arrays = {"y_true": y_true, "probs": probs, "y_pred": y_pred}
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.shape != (n_rows, len(LABELS)):
            raise ValueError(
                f"{name} has shape {array.shape}; expected ({n_rows}, {len(LABELS)}) "
                f"with columns in the order {LABELS}"
            )

    table = pd.DataFrame({FILENAME_COLUMN: [str(f) for f in filenames]})
    for columns, array, dtype in (
        (TRUE_COLUMNS, y_true, int),
        (PROB_COLUMNS, probs, float),
        (PRED_COLUMNS, y_pred, int),
    ):
        array = np.asarray(array, dtype=dtype)
        for j, column in enumerate(columns):
            table[column] = array[:, j]
    group_values = _as_text_column(groups, n_rows, GROUP_COLUMN)
    if group_values is not None:
        table[GROUP_COLUMN] = group_values
    device_values = _as_text_column(devices, n_rows, DEVICE_COLUMN)
    if device_values is not None:
        table[DEVICE_COLUMN] = device_values

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def _numeric_columns(table: pd.DataFrame, columns: Sequence[str], path: Path) -> np.ndarray:
    try:
        return table[list(columns)].to_numpy(dtype=float)
    except ValueError as error:
        raise ValueError(
            f"{path}: columns {', '.join(columns)} must contain numbers ({error})"
        ) from error


def read_predictions(path: str | Path) -> FoldPredictions:
    """Read a predictions.csv written by ``write_predictions``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a required column is missing, a label value is not 0/1
            or a probability is not a finite number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    # Ids and devices stay text: "007" must not turn into the number 7.
    table = pd.read_csv(
        path,
        dtype={FILENAME_COLUMN: str, GROUP_COLUMN: str, DEVICE_COLUMN: str},
        keep_default_na=False,
    )
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path} lacks column(s) {', '.join(missing)}; predictions.csv needs {', '.join(REQUIRED_COLUMNS)}"
        )

    y_true = _numeric_columns(table, TRUE_COLUMNS, path)
    y_pred = _numeric_columns(table, PRED_COLUMNS, path)
    for name, array in (("true", y_true), ("pred", y_pred)):
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{path}: {name}_* columns must contain only 0 and 1")

    probs = _numeric_columns(table, PROB_COLUMNS, path)
    if not np.isfinite(probs).all():
        raise ValueError(f"{path}: prob_* columns contain empty, NaN or infinite values")

    groups = table[GROUP_COLUMN].to_numpy(dtype=str) if GROUP_COLUMN in table.columns else None
    devices = table[DEVICE_COLUMN].to_numpy(dtype=str) if DEVICE_COLUMN in table.columns else None
    return FoldPredictions(
        filenames=table[FILENAME_COLUMN].to_numpy(dtype=str),
        y_true=y_true.astype(int),
        probs=probs,
        y_pred=y_pred.astype(int),
        groups=groups,
        devices=devices,
    )
