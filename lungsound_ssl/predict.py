"""Predict lung-sound labels for audio files with a trained model or the ensemble of a run's folds.

Examples:
    python -m lungsound_ssl.predict --model runs/finetune/fold_0 clip.wav
    python -m lungsound_ssl.predict --model runs/finetune recordings/ --output predictions.csv

``--model`` is one fold folder, or a fine-tuning output folder whose
``fold_*`` models are averaged by mean probability. The decision thresholds
are then the mean of the folds' thresholds. Files that fail to decode are reported in
the output with their error and do not stop the batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lungsound_ssl.audio import AudioDecodeError, decode_clip
from lungsound_ssl.classifier import LungSoundClassifier
from lungsound_ssl.config import run_cli
from lungsound_ssl.decoding import decode_predictions
from lungsound_ssl.inference import predict_probabilities
from lungsound_ssl.labels import LABELS

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
SAMPLE_RATE_HZ = 16000


@dataclass
class LoadedModels:
    """One or more fold models whose probabilities are averaged."""

    models: list[LungSoundClassifier]
    folders: list[Path]

    @property
    def thresholds(self) -> np.ndarray:
        """Decision thresholds (3,): the mean over the models."""
        return np.mean([m.config.thresholds for m in self.models], axis=0)

    def predict(self, waveforms: list[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """Mean probabilities of the models for N 16 kHz clips: (N, 3)."""
        return np.mean([predict_probabilities(m, waveforms, batch_size=batch_size) for m in self.models], axis=0)


def load_models(model_dir: str | Path, device: str = "cpu") -> LoadedModels:
    """Load one fold model, or every ``fold_*`` model below a run folder.

    Raises:
        FileNotFoundError: if the folder contains neither a model nor fold folders with models.
    """
    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        folders = [model_dir]
    else:
        folders = sorted(p for p in model_dir.glob("fold_*") if (p / "config.json").is_file())
    if not folders:
        raise FileNotFoundError(
            f"no trained model in {model_dir}: expected config.json there, or fold_*/config.json below it "
            "(the --output_dir of finetune/run.py)"
        )
    models = [LungSoundClassifier.from_pretrained(folder).to(device).eval() for folder in folders]
    logger.info("loaded %d model(s) from %s", len(models), model_dir)
    return LoadedModels(models, folders)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Audio files named directly or found (recursively) in the given folders, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            if not found:
                logger.warning("no .wav or .flac file in folder %s", path)
            files.extend(found)
        else:
            files.append(path)
    return files


def predict_files(models: LoadedModels, files: list[str | Path], batch_size: int = 32) -> list[dict]:
    """Predict every file; a file that cannot be decoded gets an ``error`` and no probabilities.

    Returns one dict per file: ``filename``, ``prob_<label>``, ``pred_<label>``,
    ``labels`` (the predicted labels joined by ``+``) and ``error``.
    """
    rows: list[dict] = []
    with tqdm(total=len(files), desc="predicting", unit="clip", disable=len(files) < 2) as bar:
        for start in range(0, len(files), batch_size):
            chunk = [Path(f) for f in files[start : start + batch_size]]
            waves, decoded = [], []
            for path in chunk:
                if not path.is_file():
                    logger.warning("cannot predict %s: file not found", path)
                    rows.append({"filename": str(path), "error": "file not found"})
                    continue
                try:
                    waves.append(decode_clip(path, SAMPLE_RATE_HZ).waveform)
                    decoded.append(path)
                except (AudioDecodeError, FileNotFoundError, OSError) as error:
                    logger.warning("cannot predict %s: %s", path, error)
                    rows.append({"filename": str(path), "error": str(error)})
            empty = [p for p, w in zip(decoded, waves) if w.size == 0]
            for path in empty:
                rows.append({"filename": str(path), "error": "file contains no samples"})
            waves = [w for w in waves if w.size]
            decoded = [p for p in decoded if p not in empty]
            if waves:
                probs = models.predict(waves, batch_size=batch_size)
                preds = decode_predictions(probs, models.thresholds)
                for path, prob, pred in zip(decoded, probs, preds):
                    row = {"filename": str(path)}
                    row.update({f"prob_{label}": float(p) for label, p in zip(LABELS, prob)})
                    row.update({f"pred_{label}": int(p) for label, p in zip(LABELS, pred)})
                    row["labels"] = "+".join(label for label, p in zip(LABELS, pred) if p)
                    row["error"] = ""
                    rows.append(row)
            bar.update(len(chunk))
    order = {str(Path(f)): i for i, f in enumerate(files)}
    return sorted(rows, key=lambda r: order.get(r["filename"], len(order)))


def write_output(rows: list[dict], output: str | None) -> None:
    """Write rows as CSV (default, to stdout when ``output`` is None) or as JSON for a ``.json`` path."""
    if output and output.endswith(".json"):
        Path(output).write_text(json.dumps(rows, indent=2))
        return
    columns = ["filename", *[f"prob_{x}" for x in LABELS], *[f"pred_{x}" for x in LABELS], "labels", "error"]
    frame = pd.DataFrame(rows, columns=columns)
    # Nullable integers, so rows of files that failed to decode leave the label columns empty
    # instead of turning every label into a float.
    for label in LABELS:
        frame[f"pred_{label}"] = frame[f"pred_{label}"].astype("Int64")
    frame.to_csv(output if output else sys.stdout, index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A fold folder, or a finetune/run.py output folder (ensemble of its folds).")
    parser.add_argument("inputs", nargs="+", help="Audio files (.wav, .flac) or folders of them.")
    parser.add_argument("--output", default=None, help="Output file: .csv or .json. Default: CSV on standard output.")
    parser.add_argument("--batch_size", type=int, default=32, help="Clips per forward pass.")
    parser.add_argument("--device", default="cpu", help="Torch device, e.g. cpu or cuda.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    models = load_models(args.model, args.device)
    files = expand_inputs(args.inputs)
    if not files:
        parser.error("no audio file found in the given inputs")
    rows = predict_files(models, files, args.batch_size)
    write_output(rows, args.output)
    failed = sum(1 for r in rows if r.get("error"))
    logger.info("predicted %d file(s), %d could not be decoded%s", len(rows) - failed, failed,
                f"; wrote {args.output}" if args.output else "")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
