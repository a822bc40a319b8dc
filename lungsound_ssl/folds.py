"""Cross-validation folds that never split a patient or recording.

Folds are built over the clips usable for labelled training, stratified on
the four-class label (normal, wheeze, crackle, both) and grouped so that all
clips of one group land in one fold. The group is, in order of preference for
``group_by="auto"``: the patient id, the recording id, or recording groups
inferred from the audio (``lungsound_ssl.groups``). ``group_by="none"`` gives
clip-level folds, which leak whenever several clips come from one recording.

The assignment is written to ``folds.csv`` (``filename,group,fold,group_source``)
so every run of an experiment can reuse it with ``--folds_file``. Fold ``k``
is the held-out test fold. Inside the other folds, a grouped inner validation
split is used for early stopping and threshold tuning, so the held-out fold
never influences model selection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from lungsound_ssl.data.table import ClipTable

logger = logging.getLogger(__name__)

FOLDS_FILE = "folds.csv"
GROUP_CHOICES = ("auto", "patient_id", "recording_id", "inferred", "none")
SPLIT_CHOICES = ("cv", "official")

# Fold numbers used by the ICBHI official split: fold 0 is held out (test).
OFFICIAL_TEST_FOLD = 0
OFFICIAL_TRAIN_FOLD = 1


@dataclass
class FoldConfig:
    """Cross-validation split options."""

    n_folds: int = field(default=5, metadata={"help": "Number of cross-validation folds."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the fold assignment and the inner split."})
    group_by: str = field(
        default="auto",
        metadata={"help": "Clip attribute the folds are grouped by: auto (patient_id, else "
                  "recording_id, else groups inferred from the audio), patient_id, recording_id, "
                  "inferred, or none (clip-level folds, optimistic when clips share a recording)."},
    )
    split: str = field(
        default="cv",
        metadata={"help": "cv: K grouped folds. official: the ICBHI 2017 train/test split from the "
                  "official_split attribute (fold 0 is the official test set)."},
    )
    folds_file: str | None = field(
        default=None,
        metadata={"help": "Existing folds.csv to reuse instead of building folds."},
    )
    inner_val_folds: int = field(
        default=5,
        metadata={"help": "The inner validation split takes 1/inner_val_folds of the training "
                  "groups (grouped and stratified like the outer folds)."},
    )

    def __post_init__(self):
        if self.group_by not in GROUP_CHOICES:
            raise ValueError(f"group_by must be one of {GROUP_CHOICES}, got {self.group_by!r}")
        if self.split not in SPLIT_CHOICES:
            raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {self.split!r}")
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be at least 2, got {self.n_folds}")
        if self.inner_val_folds < 2:
            raise ValueError(f"inner_val_folds must be at least 2, got {self.inner_val_folds}")


@dataclass
class FoldAssignment:
    """Fold of every trainable clip.

    Attributes:
        filenames: Clip ids, one per trainable clip, in table order.
        groups: Group id of each clip (the value the split was grouped by).
        folds: (N,) int fold of each clip.
        group_source: What the groups are: patient_id, recording_id,
            inferred, none (one group per clip) or official_split.
        strata: Four-class label of each clip, used for stratification.
    """

    filenames: list[str]
    groups: list[str]
    folds: np.ndarray
    group_source: str
    strata: list[str]

    @property
    def fold_ids(self) -> list[int]:
        """Folds that can be held out: all of them, or only the test fold of the official split."""
        if self.group_source == "official_split":
            return [OFFICIAL_TEST_FOLD]
        return sorted(int(f) for f in np.unique(self.folds))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"filename": self.filenames, "group": self.groups, "fold": self.folds, "group_source": self.group_source}
        )

    def write_csv(self, output_dir: str | Path) -> Path:
        path = Path(output_dir) / FOLDS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_frame().to_csv(path, index=False)
        return path

    def split(self, fold: int, inner_val_folds: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions (into ``filenames``) of the training, inner validation and held-out clips.

        The inner validation clips are whole groups taken from the training
        folds only, so model selection never uses fold ``fold``.
        """
        if fold not in self.fold_ids:
            raise ValueError(f"fold {fold} does not exist; choose one of {self.fold_ids}")
        test = np.flatnonzero(self.folds == fold)
        rest = np.flatnonzero(self.folds != fold)
        groups = np.asarray(self.groups, dtype=object)[rest]
        strata = np.asarray(self.strata, dtype=object)[rest]
        n_groups = len(set(groups))
        n_splits = min(inner_val_folds, n_groups)
        if n_splits < 2:
            raise ValueError(f"fold {fold}: the training folds contain {n_groups} group(s); at least 2 are needed")
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        inner_train, inner_val = next(splitter.split(np.zeros(len(rest)), strata, groups))
        return rest[inner_train], rest[inner_val], test


def _clip_groups(table: ClipTable, indices: np.ndarray, column: str) -> list[str]:
    values = [str(v).strip() for v in np.asarray(table.column(column), dtype=object)[indices]]
    names = np.asarray(table.filenames, dtype=object)[indices]
    missing = [n for n, v in zip(names, values) if not v]
    if missing:
        logger.warning(
            "%d clip(s) have no %s (e.g. %s); each becomes its own group", len(missing), column, missing[0]
        )
    return [v if v else f"clip:{n}" for n, v in zip(names, values)]


def _inferred_groups(table: ClipTable, indices: np.ndarray, n_folds: int) -> list[str]:
    from lungsound_ssl.groups import GroupInferenceConfig, infer_groups

    rows = table.dataset.select(indices)
    waveforms = [np.asarray(a, dtype=np.float32) for a in rows["audio"]]
    # No inferred group may be larger than one held-out fold, or the folds cannot be balanced.
    config = GroupInferenceConfig(max_group_fraction=1.0 / n_folds)
    groups = infer_groups(waveforms, table.sample_rate_hz, list(rows["source_sample_rate_hz"]), config)
    return [str(g) for g in groups]


def resolve_group_source(table: ClipTable, group_by: str) -> str:
    """Choose the grouping for ``group_by="auto"``: patient, recording, else inferred."""
    if group_by != "auto":
        return group_by
    for column in ("patient_id", "recording_id"):
        if table.has_attribute(column):
            return column
    logger.warning(
        "no patient_id or recording_id in the data; inferring recording groups from the audio so "
        "that clips of one recording stay in one fold (use --group_by none for clip-level folds)"
    )
    return "inferred"


def assign_folds(table: ClipTable, config: FoldConfig) -> FoldAssignment:
    """Build folds over the trainable clips of ``table``, or read them from ``config.folds_file``."""
    if config.folds_file:
        return read_folds_csv(config.folds_file, table)

    indices = table.trainable_indices()
    filenames = list(np.asarray(table.filenames, dtype=object)[indices])
    strata = list(np.asarray(table.column("label_class"), dtype=object)[indices])
    if not filenames:
        raise ValueError(f"no clip in {table.data_dir} is usable for training; see data_report.json")

    if config.split == "official":
        return _official_split(table, indices, filenames, strata)

    source = resolve_group_source(table, config.group_by)
    if source == "none":
        logger.warning(
            "building clip-level folds without groups: clips of one recording or patient can land on "
            "both sides of a split, so scores may be optimistic"
        )
        groups = [f"clip:{n}" for n in filenames]
        splitter = StratifiedKFold(n_splits=config.n_folds, shuffle=True, random_state=config.split_seed)
        splits = splitter.split(np.zeros(len(filenames)), strata)
    else:
        groups = _inferred_groups(table, indices, config.n_folds) if source == "inferred" else _clip_groups(table, indices, source)
        n_groups = len(set(groups))
        if n_groups < config.n_folds:
            raise ValueError(
                f"only {n_groups} distinct {source} value(s) for {config.n_folds} folds; "
                "lower --n_folds or choose another --group_by"
            )
        splitter = StratifiedGroupKFold(n_splits=config.n_folds, shuffle=True, random_state=config.split_seed)
        splits = splitter.split(np.zeros(len(filenames)), strata, groups)

    folds = np.full(len(filenames), -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splits):
        folds[held_out] = fold
    assignment = FoldAssignment(filenames, groups, folds, source, strata)
    _log_folds(assignment)
    return assignment


def _official_split(table, indices, filenames, strata) -> FoldAssignment:
    values = [str(v).strip().lower() for v in np.asarray(table.column("official_split"), dtype=object)[indices]]
    bad = sorted({v for v in values if v not in ("train", "test")})
    if bad:
        raise ValueError(
            f"split=official needs an official_split value of train or test for every clip; found {bad}. "
            "Use --split cv or add the ICBHI split file"
        )
    folds = np.array([OFFICIAL_TEST_FOLD if v == "test" else OFFICIAL_TRAIN_FOLD for v in values])
    source_column = "patient_id" if table.has_attribute("patient_id") else "recording_id"
    groups = _clip_groups(table, indices, source_column)
    assignment = FoldAssignment(filenames, groups, folds, "official_split", strata)
    _log_folds(assignment)
    return assignment


def _log_folds(assignment: FoldAssignment) -> None:
    frame = assignment.to_frame().assign(label=assignment.strata)
    counts = frame.groupby("fold")["label"].value_counts().unstack(fill_value=0)
    logger.info(
        "%d folds grouped by %s (%d groups):\n%s",
        len(np.unique(assignment.folds)), assignment.group_source, len(set(assignment.groups)), counts.to_string(),
    )
    # A fold without any clip of a class cannot score that class (AUROC and sensitivity are undefined).
    for fold, row in counts.iterrows():
        missing = [label for label in counts.columns if row[label] == 0]
        if missing:
            logger.warning(
                "fold %s has no clip labelled %s; its metrics for that class will be undefined "
                "(fewer folds or more data help)", fold, ", ".join(missing),
            )


def read_folds_csv(path: str | Path, table: ClipTable) -> FoldAssignment:
    """Read a ``folds.csv`` written earlier and check it covers the table's trainable clips.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if columns are missing or the file does not match the trainable clips.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"folds file not found: {path}; omit --folds_file to build new folds")
    frame = pd.read_csv(path, dtype={"filename": str, "group": str})
    missing_columns = {"filename", "group", "fold"} - set(frame.columns)
    if missing_columns:
        raise ValueError(f"{path}: missing column(s) {sorted(missing_columns)}; expected filename,group,fold")

    indices = table.trainable_indices()
    filenames = list(np.asarray(table.filenames, dtype=object)[indices])
    strata = list(np.asarray(table.column("label_class"), dtype=object)[indices])
    by_name = frame.set_index("filename")
    absent = [n for n in filenames if n not in by_name.index]
    if absent:
        raise ValueError(
            f"{path} has no fold for {len(absent)} trainable clip(s) (e.g. {absent[0]}); "
            "it was built for other data: omit --folds_file to build new folds"
        )
    extra = len(set(by_name.index) - set(filenames))
    if extra:
        logger.warning("%s lists %d clip(s) that are not trainable in this data; ignoring them", path, extra)
    source = str(frame["group_source"].iloc[0]) if "group_source" in frame.columns else "file"
    assignment = FoldAssignment(
        filenames,
        [str(by_name.at[n, "group"]) for n in filenames],
        np.asarray([int(by_name.at[n, "fold"]) for n in filenames]),
        source,
        strata,
    )
    logger.info("read folds from %s (grouped by %s)", path, source)
    return assignment
