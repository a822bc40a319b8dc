"""Summarise a clip table as ``data_report.json``: what was read, what was kept, and why not."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from lungsound_ssl.data.table import ClipTable

logger = logging.getLogger(__name__)

REPORT_FILE = "data_report.json"

# Upper edges in seconds of the duration buckets in the report.
_DURATION_EDGES_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def _duration_bucket(seconds: float) -> str:
    lower = 0.0
    for upper in _DURATION_EDGES_S:
        if seconds < upper:
            return f"{lower:g}-{upper:g} s"
        lower = upper
    return f">={lower:g} s"


def _label_counts(classes) -> dict[str, int]:
    counts = Counter(c for c in classes if c)
    return {
        "normal": counts.get("normal", 0),
        "wheeze_only": counts.get("wheeze", 0),
        "crackle_only": counts.get("crackle", 0),
        "both": counts.get("both", 0),
    }


def build_report(table: ClipTable, duplicate_label_disagreements: list[dict]) -> dict:
    """Describe the table: counts per label, sample rate, duration and exclusion reason."""
    ds = table.dataset
    exclusions = np.asarray(ds["exclusion"], dtype=object)
    classes = np.asarray(ds["label_class"], dtype=object)
    rates = np.asarray(ds["source_sample_rate_hz"])
    durations = np.asarray(ds["duration_s"], dtype=float)
    channels = np.asarray(ds["source_channels"])
    decoded = rates > 0
    trainable = exclusions == ""

    excluded = [
        {"filename": name, "reason": reason, "detail": detail}
        for name, reason, detail in zip(ds["filename"], ds["exclusion"], ds["exclusion_detail"])
        if reason
    ]
    return {
        "data_dir": str(table.data_dir),
        "data_format": table.data_format,
        "fingerprint": table.fingerprint,
        "sample_rate_hz": table.sample_rate_hz,
        "n_listed": len(ds),
        "n_decoded": int(decoded.sum()),
        "n_trainable": int(trainable.sum()),
        "n_pretrain": int(np.asarray(ds["pretrain_ok"], dtype=bool).sum()),
        "label_counts": _label_counts(classes[trainable]),
        "label_counts_all_labelled": _label_counts(classes),
        "sample_rate_counts": {
            str(rate): int(n) for rate, n in sorted(Counter(rates[decoded].tolist()).items())
        },
        "duration_counts": dict(Counter(_duration_bucket(d) for d in durations[decoded])),
        "downmixed_multichannel": int((channels > 1).sum()),
        "source_subtype_counts": dict(Counter(s for s in ds["source_subtype"] if s)),
        "exclusion_counts": dict(Counter(r for r in exclusions if r)),
        "duplicate_label_disagreements": duplicate_label_disagreements,
        "excluded": excluded,
    }


def log_report(report: dict) -> None:
    """Log the counts once: one line for the totals and one per exclusion reason."""
    logger.info(
        "%d clips listed, %d decoded, %d usable for training, %d for pretraining; labels %s",
        report["n_listed"], report["n_decoded"], report["n_trainable"], report["n_pretrain"],
        report["label_counts"],
    )
    for reason, count in sorted(report["exclusion_counts"].items()):
        logger.info("excluded from training: %d clip(s), reason: %s", count, reason)
    if report["downmixed_multichannel"]:
        logger.info("mixed %d multi-channel file(s) down to mono", report["downmixed_multichannel"])
    for item in report["duplicate_label_disagreements"]:
        logger.warning(
            "duplicate audio with different labels: %s (%s) equals %s (%s)",
            item["filename"], item["labels"], item["duplicate_of"], item["labels_of_kept"],
        )


def write_report(report: dict, output_dir: str | Path) -> Path:
    """Write ``data_report.json`` into ``output_dir`` and return its path."""
    path = Path(output_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
