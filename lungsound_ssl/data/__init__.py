"""Read, clean and cache lung-sound clips from any supported layout.

``load_clips`` is the entry point: it detects the layout, lists the clips,
decodes and cleans them into a ``ClipTable`` and builds the cleaning report.
``python -m lungsound_ssl.data`` runs it from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lungsound_ssl.data.cleaning import CleaningConfig
from lungsound_ssl.data.records import ClipRecord
from lungsound_ssl.data.report import build_report, log_report, write_report
from lungsound_ssl.data.table import ClipTable, build_clip_table

__all__ = [
    "CleaningConfig",
    "ClipRecord",
    "ClipTable",
    "DataConfig",
    "build_report",
    "load_clips",
    "table_from_records",
    "write_report",
]


@dataclass
class DataConfig(CleaningConfig):
    """Data folder, layout, resampling, cache and cleaning options."""

    data_dir: str | None = field(
        default=None,
        metadata={"help": "Data folder (take-home train/ + train.csv, ICBHI 2017 or SPRSound). "
                  "Empty: generate the built-in synthetic demo set."},
    )
    data_format: str = field(
        default="auto",
        metadata={"help": "Layout of --data_dir: auto, takehome, icbhi or sprsound."},
    )
    sample_rate_hz: int = field(default=16000, metadata={"help": "Rate every clip is resampled to, in Hz."})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder for decoded-audio caches. Default: $LUNGSOUND_CACHE_DIR or "
                  "~/.cache/lungsound_ssl/clips. Never inside the data folder."},
    )
    rhonchi_as_wheeze: bool = field(
        default=True,
        metadata={"help": "SPRSound only: label Rhonchi events as wheeze (both are continuous "
                  "adventitious sounds); if false they are left out of labelled training."},
    )
    stridor_as_wheeze: bool = field(
        default=True,
        metadata={"help": "SPRSound only: label Stridor events as wheeze; if false they are left "
                  "out of labelled training."},
    )
    use_poor_quality_for_pretraining: bool = field(
        default=True,
        metadata={"help": "SPRSound only: use recordings annotated Poor Quality for "
                  "self-supervised pretraining (never for labelled training)."},
    )

    def sprsound_options(self):
        from lungsound_ssl.data.sprsound import SPRSoundOptions

        return SPRSoundOptions(
            rhonchi_as_wheeze=self.rhonchi_as_wheeze,
            stridor_as_wheeze=self.stridor_as_wheeze,
            use_poor_quality_for_pretraining=self.use_poor_quality_for_pretraining,
        )

    def cleaning(self) -> CleaningConfig:
        return CleaningConfig(
            min_duration_s=self.min_duration_s,
            max_clipped_fraction=self.max_clipped_fraction,
            drop_duplicates=self.drop_duplicates,
        )


def load_clips(config: DataConfig) -> tuple[ClipTable, dict]:
    """List, decode and clean the clips of ``config.data_dir``.

    Returns:
        The clip table and the cleaning report (the content of ``data_report.json``).

    Raises:
        FileNotFoundError: if the data folder or a required label file is missing.
        ValueError: if the layout is not recognised or a label file is malformed.
    """
    from lungsound_ssl.data.formats import read_records

    if config.data_dir is None:
        raise ValueError("no data folder given; pass --data_dir or generate the demo set first")
    data_dir = Path(config.data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}; pass an existing folder to --data_dir")

    data_format, records = read_records(data_dir, config.data_format, config.sprsound_options())
    return table_from_records(records, data_dir, data_format, config)


def table_from_records(
    records: list[ClipRecord], data_dir: str | Path, data_format: str, config: DataConfig
) -> tuple[ClipTable, dict]:
    """Decode, clean and cache listed clips, then build and log their cleaning report."""
    table, disagreements = build_clip_table(
        records,
        data_dir=data_dir,
        data_format=data_format,
        sample_rate_hz=config.sample_rate_hz,
        cleaning=config.cleaning(),
        cache_dir=config.cache_dir,
    )
    report = build_report(table, disagreements)
    log_report(report)
    return table, report
