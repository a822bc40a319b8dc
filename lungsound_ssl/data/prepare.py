"""The data step shared by every entry point: load, clean, split, and write the reports."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lungsound_ssl.data import DataConfig, load_clips
from lungsound_ssl.data.report import write_report
from lungsound_ssl.data.table import ClipTable, default_cache_dir
from lungsound_ssl.folds import FoldAssignment, FoldConfig, assign_folds
from lungsound_ssl.synthetic import SyntheticConfig, write_synthetic_dataset

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Result of the data step."""

    table: ClipTable
    report: dict
    assignment: FoldAssignment | None
    report_path: Path
    folds_path: Path | None


def demo_data_dir(seed: int = 0) -> Path:
    """Folder of the built-in synthetic set, generated on first use."""
    folder = default_cache_dir().parent / "demo_data" / f"seed_{seed}"
    if not (folder / "train.csv").is_file():
        write_synthetic_dataset(folder, SyntheticConfig(seed=seed))
    return folder


def prepare_data(
    data_config: DataConfig,
    fold_config: FoldConfig | None,
    output_dir: str | Path,
    *,
    main_process: bool = True,
) -> PreparedData:
    """Load and clean the clips, build the folds, and write data_report.json and folds.csv.

    With no ``data_dir`` the built-in synthetic demo set is used. With
    ``fold_config=None`` no folds are built (pretraining on unlabeled data).
    Only the main process writes files.
    """
    if data_config.data_dir is None:
        data_config.data_dir = str(demo_data_dir())
        logger.info("no --data_dir given; using the built-in synthetic demo set in %s", data_config.data_dir)
    table, report = load_clips(data_config)
    output_dir = Path(output_dir)
    report_path = output_dir / "data_report.json"
    if main_process:
        write_report(report, output_dir)

    assignment, folds_path = None, None
    if fold_config is not None and len(table.trainable_indices()) > 0:
        assignment = assign_folds(table, fold_config)
        report["split"] = {
            "strategy": fold_config.split,
            "group_source": assignment.group_source,
            "n_groups": len(set(assignment.groups)),
            "fold_ids": assignment.fold_ids,
        }
        if main_process:
            folds_path = assignment.write_csv(output_dir)
            write_report(report, output_dir)
        else:
            folds_path = output_dir / "folds.csv"
    return PreparedData(table, report, assignment, report_path, folds_path)
