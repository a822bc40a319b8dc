"""Logging set-up shared by the entry points: INFO on the main process, warnings elsewhere."""

from __future__ import annotations

import logging

import datasets
import transformers


def setup_logging(training_args=None) -> None:
    """Log at INFO on the main process and at WARNING on the others (one line per process otherwise)."""
    main_process = training_args is None or training_args.process_index == 0
    level = logging.INFO if main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    transformers.utils.logging.set_verbosity(logging.WARNING)
    datasets.utils.logging.set_verbosity(logging.WARNING)
    datasets.disable_progress_bars()
