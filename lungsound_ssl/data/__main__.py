"""Load and clean a data folder and write data_report.json and folds.csv, without training.

Example:
    python -m lungsound_ssl.data --data_dir ../shared/data/icbhi-cycles --output_dir runs/data
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from lungsound_ssl.config import parse_config, run_cli
from lungsound_ssl.data import DataConfig
from lungsound_ssl.data.prepare import prepare_data
from lungsound_ssl.folds import FoldConfig

logger = logging.getLogger("lungsound_ssl.data")


@dataclass
class OutputConfig:
    output_dir: str = field(default="runs/data", metadata={"help": "Folder for data_report.json and folds.csv."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_config, fold_config, output = parse_config((DataConfig, FoldConfig, OutputConfig), argv)
    prepared = prepare_data(data_config, fold_config, output.output_dir)
    logger.info("wrote %s and %s", prepared.report_path, prepared.folds_path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
