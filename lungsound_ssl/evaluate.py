"""Score a trained model, or the ensemble of a run's folds, on another labelled data folder.

Example:
    python -m lungsound_ssl.evaluate --model runs/finetune --data_dir ../shared/data/sprsound-subset \\
        --output_dir runs/eval-sprsound

The data folder can be in any supported layout. Its clips are cleaned as in
training; every clip usable for training is scored. Writes ``metrics.json``,
``predictions.csv`` and ``data_report.json`` to ``--output_dir``. This is how
to measure generalisation beyond the training data's cross-validation (another
hospital, stethoscope or age group).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from lungsound_ssl.config import run_cli
from lungsound_ssl.data import DataConfig, load_clips
from lungsound_ssl.data.report import write_report
from lungsound_ssl.decoding import decode_predictions
from lungsound_ssl.metrics import compute_metrics
from lungsound_ssl.predict import load_models
from lungsound_ssl.predictions_io import write_predictions

logger = logging.getLogger(__name__)


def evaluate(model_dir: str, data_config: DataConfig, output_dir: str | Path, batch_size: int = 32,
             device: str = "cpu") -> dict:
    """Score ``model_dir`` on ``data_config.data_dir`` and write the outputs; return the metrics."""
    output_dir = Path(output_dir)
    models = load_models(model_dir, device)
    table, report = load_clips(data_config)
    write_report(report, output_dir)
    rows = table.trainable_indices()
    if len(rows) == 0:
        raise ValueError(f"no labelled clip in {data_config.data_dir} is usable; see {output_dir}/data_report.json")

    waves = [table.audio(i) for i in rows]
    probs = models.predict(waves, batch_size=batch_size)
    preds = decode_predictions(probs, models.thresholds)
    truth = table.labels(rows)
    devices = list(np.asarray(table.column("device"), dtype=object)[rows]) if table.has_attribute("device") else None
    metrics = compute_metrics(truth, probs, preds, devices=devices)
    metrics["model"] = str(model_dir)
    metrics["n_models"] = len(models.models)
    metrics["data_dir"] = str(data_config.data_dir)

    groups = None
    for column in ("patient_id", "recording_id"):
        if table.has_attribute(column):
            groups = list(np.asarray(table.column(column), dtype=object)[rows])
            break
    write_predictions(output_dir / "predictions.csv", np.asarray(table.filenames, dtype=object)[rows], truth,
                      probs, preds, groups=groups, devices=devices)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    logger.info("scored %d clips: macro AUROC %s, ICBHI score %s; wrote %s", len(rows), metrics.get("macro_auroc"),
                metrics.get("icbhi_4class", {}).get("score"), output_dir)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A fold folder, or a finetune/run.py output folder (ensemble of its folds).")
    parser.add_argument("--data_dir", required=True, help="Labelled data folder in any supported layout.")
    parser.add_argument("--data_format", default="auto", help="auto, takehome, icbhi or sprsound.")
    parser.add_argument("--output_dir", required=True, help="Folder for metrics.json, predictions.csv and data_report.json.")
    parser.add_argument("--cache_dir", default=None, help="Decoded-audio cache folder (default: the user cache).")
    parser.add_argument("--batch_size", type=int, default=32, help="Clips per forward pass.")
    parser.add_argument("--device", default="cpu", help="Torch device, e.g. cpu or cuda.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_config = DataConfig(data_dir=args.data_dir, data_format=args.data_format, cache_dir=args.cache_dir)
    evaluate(args.model, data_config, args.output_dir, args.batch_size, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
