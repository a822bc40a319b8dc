"""The fine-tuning job behind ``finetune/run.py``: one model per cross-validation fold.

For fold k: train on the other folds minus a grouped inner validation split,
select the checkpoint and tune the decision thresholds on that inner split,
then score fold k once. Fold k is never used for any choice.

Writes ``OUTPUT_DIR/fold_k/``: the model (``save_pretrained``),
``thresholds.json``, ``metrics.json``, ``predictions.csv``,
``trainer_state.json`` and ``fold_info.json``. ``OUTPUT_DIR`` gets
``data_report.json``, ``folds.csv`` and ``run_info.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import EarlyStoppingCallback, TrainingArguments, set_seed

from lungsound_ssl import __version__
from lungsound_ssl.augment import AugmentConfig
from lungsound_ssl.classifier import LungSoundClassifier
from lungsound_ssl.config import config_to_dict
from lungsound_ssl.data import DataConfig
from lungsound_ssl.data.prepare import PreparedData, prepare_data
from lungsound_ssl.decoding import decode_predictions, save_thresholds, tune_thresholds
from lungsound_ssl.encoders import AudioEncoder, build_encoder, load_encoder_config
from lungsound_ssl.finetuning import (
    CropCollator,
    FinetuneArguments,
    FinetuneTrainer,
    LabelledClipDataset,
    positive_weights,
    validation_auroc,
)
from lungsound_ssl.folds import FoldConfig
from lungsound_ssl.inference import predict_probabilities
from lungsound_ssl.metrics import compute_metrics
from lungsound_ssl.predictions_io import write_predictions

logger = logging.getLogger(__name__)

PRETRAINING_DATA_FILE = "pretraining_data.json"

# How-to for the model card; the fold folders load with this repository's package installed.
USAGE = """Each `fold_k` folder holds a model trained without fold k. Install this repository's package
(`pip install -e .` in a clone), then:

```bash
# one fold's model, or --model OUTPUT_DIR for the mean probability of every fold's model
python -m lungsound_ssl.predict --model OUTPUT_DIR/fold_0 clip.wav more_clips/ --output predictions.csv
```

```python
from lungsound_ssl.predict import load_models, predict_files

models = load_models("OUTPUT_DIR")  # every fold: an ensemble averaging probabilities
rows = predict_files(models, ["clip.wav"])  # per clip: labels, probabilities, decode errors
```
"""


def build_finetune_encoder(args: FinetuneArguments) -> AudioEncoder:
    """Load the encoder to fine-tune, or build a fresh one for the from-scratch baseline."""
    overrides = {}
    if args.clip_seconds is not None:
        overrides["clip_seconds"] = args.clip_seconds
    if args.eval_crop is not None:
        overrides["eval_crop"] = args.eval_crop
    if args.model_name_or_path:
        return AudioEncoder.from_pretrained(args.model_name_or_path, **overrides)
    return build_encoder(load_encoder_config(args.encoder, **overrides))


def pretraining_provenance(model_name_or_path: str | None, table) -> dict:
    """Describe the encoder's pretraining data and whether it included this data folder's audio."""
    if not model_name_or_path:
        return {"pretrain_dir": None, "pretrain_data": "none (trained from scratch)", "pretrain_saw_heldout": False}
    info_path = Path(model_name_or_path) / PRETRAINING_DATA_FILE
    if not info_path.is_file():
        return {"pretrain_dir": model_name_or_path, "pretrain_data": "unknown (not a pretrain/run.py output)",
                "pretrain_saw_heldout": None}
    info = json.loads(info_path.read_text())
    folders = info.get("folders", [])
    data_dir = str(Path(table.data_dir).resolve())
    saw = any(f.get("data_dir") == data_dir or f.get("fingerprint") == table.fingerprint for f in folders)
    described = ", ".join(f"{f['data_dir']} ({f['n_clips']} clips, {f['data_format']})" for f in folders)
    return {"pretrain_dir": model_name_or_path, "pretrain_data": described, "pretrain_saw_heldout": saw}


def _fold_ids(args: FinetuneArguments, prepared: PreparedData) -> list[int]:
    available = prepared.assignment.fold_ids
    if args.fold == "all":
        return available
    fold = int(args.fold)
    if fold not in available:
        raise ValueError(f"--fold {fold} does not exist; choose one of {available} or 'all'")
    return [fold]


def run_finetuning(
    args: FinetuneArguments,
    data_config: DataConfig,
    fold_config: FoldConfig,
    augment: AugmentConfig,
    training_args: TrainingArguments,
) -> list[Path]:
    """Fine-tune one model per requested fold and return the fold folders."""
    output_dir = Path(training_args.output_dir)
    main_process = training_args.process_index == 0
    prepared = prepare_data(data_config, fold_config, output_dir, main_process=main_process)
    if prepared.assignment is None:
        raise ValueError(f"no labelled clip in {data_config.data_dir} is usable for training; see data_report.json")

    provenance = pretraining_provenance(args.model_name_or_path, prepared.table)
    if provenance["pretrain_saw_heldout"]:
        logger.info(
            "the encoder was pretrained on this data folder, so it saw the audio (never the labels) of every "
            "held-out fold; the model card says so"
        )
    if main_process:
        _write_run_info(output_dir, args, data_config, fold_config, augment, training_args, prepared, provenance)

    fold_dirs = []
    for fold in _fold_ids(args, prepared):
        fold_dirs.append(train_fold(fold, args, prepared, fold_config, augment, training_args))
    return fold_dirs


def train_fold(
    fold: int,
    args: FinetuneArguments,
    prepared: PreparedData,
    fold_config: FoldConfig,
    augment: AugmentConfig,
    training_args: TrainingArguments,
) -> Path:
    """Train, select, tune and score the model of one held-out fold; return its folder."""
    set_seed(training_args.seed)
    table, assignment = prepared.table, prepared.assignment
    fold_dir = Path(training_args.output_dir) / f"fold_{fold}"
    # Pinned memory only helps copies to a GPU; on CPU the DataLoader warns about it every epoch.
    fold_args = dataclasses.replace(
        training_args, output_dir=str(fold_dir),
        dataloader_pin_memory=training_args.dataloader_pin_memory and torch.cuda.is_available(),
    )
    main_process = training_args.process_index == 0

    train_pos, val_pos, test_pos = assignment.split(fold, fold_config.inner_val_folds, fold_config.split_seed)
    trainable = table.trainable_indices()
    train_rows, val_rows, test_rows = trainable[train_pos], trainable[val_pos], trainable[test_pos]
    train_set = LabelledClipDataset(table, train_rows)
    val_set = LabelledClipDataset(table, val_rows)

    encoder = build_finetune_encoder(args)
    pos_weight = positive_weights(train_set.labels, args.max_pos_weight) if args.imbalance == "pos_weight" else None
    model = LungSoundClassifier.from_encoder(
        encoder, head_dropout=args.head_dropout, pos_weight=pos_weight, threshold_criterion=args.threshold_criterion
    )
    if args.encoder_lr_scale == 0:
        model.encoder.requires_grad_(False)

    config = encoder.config
    fade_samples = int(round(config.fade_ms * 16))
    train_collator = CropCollator(config.clip_samples, config.pad_mode, fade_samples, train=True,
                                  seed=training_args.seed, augment=augment if args.augment_train else None)
    eval_collator = CropCollator(config.clip_samples, config.pad_mode, fade_samples, train=False, seed=0)

    logger.info(
        "fold %d: %d training, %d inner-validation and %d held-out clips (grouped by %s); encoder %s from %s; "
        "positive weights %s; global batch %d",
        fold, len(train_rows), len(val_rows), len(test_rows), assignment.group_source, config.architecture,
        args.model_name_or_path or "scratch", pos_weight,
        training_args.per_device_train_batch_size * training_args.world_size * training_args.gradient_accumulation_steps,
    )
    trainer = FinetuneTrainer(
        model=model,
        args=fold_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=_SwitchingCollator(train_collator, eval_collator),
        compute_metrics=validation_auroc,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience)],
        encoder_lr_scale=args.encoder_lr_scale,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    model = trainer.model  # the best checkpoint on the inner validation split

    # Thresholds come from the inner validation split only; the held-out fold is scored once, after.
    val_waves = [table.audio(i) for i in val_rows]
    val_probs = predict_probabilities(model, val_waves, batch_size=training_args.per_device_eval_batch_size)
    thresholds = tune_thresholds(table.labels(val_rows), val_probs, criterion=args.threshold_criterion)
    model.config.thresholds = [float(t) for t in thresholds]

    test_waves = [table.audio(i) for i in test_rows]
    test_probs = predict_probabilities(model, test_waves, batch_size=training_args.per_device_eval_batch_size)
    test_pred = decode_predictions(test_probs, thresholds)
    test_true = table.labels(test_rows)
    devices = _column_or_none(table, "device", test_rows)
    metrics = compute_metrics(test_true, test_probs, test_pred, devices=devices)
    metrics["fold"] = fold
    metrics["thresholds"] = dict(zip(model.config.id2label.values(), model.config.thresholds))

    if main_process:
        model.save_pretrained(fold_dir)
        save_thresholds(fold_dir / "thresholds.json", thresholds, args.threshold_criterion)
        (fold_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        groups = np.asarray(assignment.groups, dtype=object)[test_pos]
        write_predictions(
            fold_dir / "predictions.csv", np.asarray(table.filenames, dtype=object)[test_rows], test_true,
            test_probs, test_pred, groups=groups, devices=devices,
        )
        trainer.state.save_to_json(str(fold_dir / "trainer_state.json"))
        fold_info = {"fold": fold, "n_train": len(train_rows), "n_inner_validation": len(val_rows),
                     "n_held_out": len(test_rows), "group_source": assignment.group_source,
                     "best_checkpoint": trainer.state.best_model_checkpoint,
                     "best_inner_validation_macro_auroc": trainer.state.best_metric}
        (fold_dir / "fold_info.json").write_text(json.dumps(fold_info, indent=2))
        for checkpoint in fold_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
    logger.info(
        "fold %d held-out: macro AUROC %s, macro F1 %s, ICBHI score %s",
        fold, _fmt(metrics.get("macro_auroc")), _fmt(metrics.get("macro_f1")),
        _fmt(metrics.get("icbhi_4class", {}).get("score")),
    )
    return fold_dir


class _SwitchingCollator:
    """Training collator in training, evaluation collator under ``torch.no_grad`` evaluation.

    The ``Trainer`` takes one ``data_collator``; evaluation batches are
    recognised because autograd is disabled while they are collated.
    """

    def __init__(self, train_collator: CropCollator, eval_collator: CropCollator):
        self.train_collator = train_collator
        self.eval_collator = eval_collator

    def __call__(self, items):
        if torch.is_grad_enabled():
            return self.train_collator(items)
        return self.eval_collator(items)


def _column_or_none(table, name: str, rows: np.ndarray):
    if not table.has_attribute(name):
        return None
    return list(np.asarray(table.column(name), dtype=object)[rows])


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _saved_architecture(model_name_or_path: str) -> str:
    """Architecture named in a saved encoder's config, or ``"unknown"`` (e.g. for a Hub id)."""
    for name in ("lungsound_encoder.json", "config.json"):
        path = Path(model_name_or_path) / name
        if path.is_file():
            content = json.loads(path.read_text())
            return content.get("encoder_config", {}).get("architecture") or content.get("model_type", "unknown")
    return "unknown"


def _write_run_info(output_dir, args, data_config, fold_config, augment, training_args, prepared, provenance):
    from lungsound_ssl.runinfo import collect_run_info

    resolved = {
        "finetune": config_to_dict(args),
        "data": config_to_dict(data_config),
        "folds": config_to_dict(fold_config),
        "augment": config_to_dict(augment),
        "training": training_args.to_dict(),
    }
    info = collect_run_info(resolved, training_args.seed)
    encoder_config = load_encoder_config(args.encoder) if not args.model_name_or_path else None
    info.update({
        "data_dir": str(prepared.table.data_dir),
        "data_format": prepared.table.data_format,
        "data_report": {k: v for k, v in prepared.report.items() if k != "excluded"},
        "split_strategy": (
            "ICBHI 2017 official train/test split" if fold_config.split == "official"
            else f"StratifiedGroupKFold grouped by {prepared.assignment.group_source}, "
                 f"stratified on the four-class label, seed {fold_config.split_seed}"
        ),
        "group_source": prepared.assignment.group_source,
        "n_folds": len(prepared.assignment.fold_ids),
        "encoder_type": encoder_config.architecture if encoder_config else _saved_architecture(args.model_name_or_path),
        "base_model": args.model_name_or_path,
        "command": " ".join(["accelerate launch finetune/run.py", *sys.argv[1:]]),
        "package_version": __version__,
        "usage": USAGE,
        **provenance,
    })
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2, default=str))
