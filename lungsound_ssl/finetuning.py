"""Pieces of per-fold fine-tuning: options, datasets, collator, class weights and the ``Trainer``.

Shapes: B clips, S samples per crop (16 kHz), L = 3 labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import Dataset
from transformers import Trainer

from lungsound_ssl.augment import AugmentConfig, WaveformAugmenter
from lungsound_ssl.cropping import crop_or_pad_batch
from lungsound_ssl.data.table import ClipTable
from lungsound_ssl.labels import LABELS

logger = logging.getLogger(__name__)

IMBALANCE_CHOICES = ("pos_weight", "none")
THRESHOLD_CRITERIA = ("f1", "youden")


@dataclass
class FinetuneArguments:
    """Options of fine-tuning that ``TrainingArguments`` does not cover."""

    fold: str = field(
        default="all",
        metadata={"help": "Held-out fold to train for: an integer, or 'all' to run every fold in sequence."},
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Encoder to start from: a pretrain/run.py output, a Hub id or a local transformers "
                  "AST/wav2vec2 directory. Empty: train from scratch with --encoder (the baseline)."},
    )
    encoder: str = field(
        default="ast-tiny",
        metadata={"help": "Encoder preset or YAML file used when --model_name_or_path is empty."},
    )
    clip_seconds: float | None = field(
        default=None, metadata={"help": "Crop length in seconds; empty keeps the encoder's clip_seconds."}
    )
    eval_crop: str | None = field(
        default=None,
        metadata={"help": "Evaluation crops: center or sliding (windows averaged); empty keeps the encoder's setting."},
    )
    imbalance: str = field(
        default="pos_weight",
        metadata={"help": "Class-imbalance handling: pos_weight (BCE positive weights from the training fold, "
                  "capped at max_pos_weight) or none."},
    )
    max_pos_weight: float = field(default=10.0, metadata={"help": "Upper bound of each positive weight."})
    encoder_lr_scale: float = field(
        default=0.1,
        metadata={"help": "Learning rate of the encoder relative to the head. Lower values keep more of the "
                  "pretrained representation; 0 freezes the encoder (a linear probe)."},
    )
    head_dropout: float = field(default=0.1, metadata={"help": "Dropout before the linear head."})
    threshold_criterion: str = field(
        default="f1",
        metadata={"help": "Per-label threshold tuned on the inner validation split to maximise: f1 or youden."},
    )
    early_stopping_patience: int = field(
        default=3, metadata={"help": "Evaluations without a better inner-validation macro AUROC before stopping."}
    )
    augment_train: bool = field(
        default=True, metadata={"help": "Apply the waveform augmentations (gain, noise, shift) to training crops."}
    )

    def __post_init__(self):
        if self.fold != "all" and not str(self.fold).lstrip("-").isdigit():
            raise ValueError(f"--fold must be an integer or 'all', got {self.fold!r}")
        if self.imbalance not in IMBALANCE_CHOICES:
            raise ValueError(f"imbalance must be one of {IMBALANCE_CHOICES}, got {self.imbalance!r}")
        if self.threshold_criterion not in THRESHOLD_CRITERIA:
            raise ValueError(f"threshold_criterion must be one of {THRESHOLD_CRITERIA}, got {self.threshold_criterion!r}")
        if self.encoder_lr_scale < 0:
            raise ValueError(f"encoder_lr_scale must be >= 0, got {self.encoder_lr_scale}")


class LabelledClipDataset(Dataset):
    """Items ``{"audio": (L,) float32, "labels": (3,) float32, "index": int}`` of selected table rows."""

    def __init__(self, table: ClipTable, rows: np.ndarray):
        self.table = table
        self.rows = np.asarray(rows)
        self.labels = table.labels(self.rows).astype(np.float32)  # (N, 3)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> dict:
        return {"audio": self.table.audio(self.rows[position]), "labels": self.labels[position], "index": position}


class CropCollator:
    """Crop or pad each clip to the encoder's length; random crops and augmentation only in training.

    The random state of a batch is seeded from ``seed`` and the batch's
    dataset positions, so a resumed run collates the same batches.
    """

    def __init__(self, clip_samples: int, pad_mode: str, fade_samples: int, *, train: bool, seed: int,
                 augment: AugmentConfig | None = None):
        self.clip_samples = clip_samples
        self.pad_mode = pad_mode
        self.fade_samples = fade_samples
        self.train = train
        self.seed = seed
        self.augmenter = WaveformAugmenter(augment) if (train and augment is not None) else None

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        rng, generator = None, None
        if self.train:
            seed = int(np.random.SeedSequence([self.seed, *[item["index"] for item in items]]).generate_state(1)[0])
            rng = np.random.default_rng(seed)
            generator = torch.Generator().manual_seed(seed)
        crops, masks = crop_or_pad_batch(
            [item["audio"] for item in items], self.clip_samples, mode=self.pad_mode, rng=rng,
            fade_samples=self.fade_samples,
        )
        crops = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))  # (B, S)
        if self.augmenter is not None:
            with torch.no_grad():
                crops = self.augmenter(crops, generator=generator)
        return {
            "input_values": crops,
            "attention_mask": torch.from_numpy(np.asarray(masks)).long(),
            "labels": torch.from_numpy(np.stack([item["labels"] for item in items])),  # (B, 3)
        }


def positive_weights(labels: np.ndarray, max_weight: float) -> list[float]:
    """BCE positive weights n_negative / n_positive per label, capped at ``max_weight``.

    A label with no positive clip gets ``max_weight``.
    """
    positives = labels.sum(axis=0)
    negatives = len(labels) - positives
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1), max_weight)
    return [float(w) for w in np.clip(weights, 1e-3, max_weight)]


def validation_auroc(eval_prediction) -> dict[str, float]:
    """Macro AUROC over the labels defined in a Trainer evaluation (for early stopping)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    scores = {}
    for column, name in enumerate(LABELS):
        if len(np.unique(labels[:, column])) == 2:
            scores[f"auroc_{name}"] = float(roc_auc_score(labels[:, column], logits[:, column]))
    scores["macro_auroc"] = float(np.mean(list(scores.values()))) if scores else 0.5
    return scores


class FinetuneTrainer(Trainer):
    """``Trainer`` with a separate (usually lower) learning rate for the encoder than for the head."""

    def __init__(self, *args, encoder_lr_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoder_lr_scale = encoder_lr_scale

    # transformers 5 renames backbone weights between the saved checkpoint format and the module
    # names. Its generic checkpoint loaders only know the renames of the top-level model type, so
    # they would leave the nested AST weights unloaded. from_pretrained applies the renames.
    def _load_weights(self, checkpoint_dir: str, model=None) -> None:
        model = self.model if model is None else model
        loaded = type(model).from_pretrained(checkpoint_dir)
        model.load_state_dict(loaded.state_dict(), strict=True)

    def _load_best_model(self) -> None:
        logger.info("loading the best checkpoint %s (inner-validation macro AUROC %s)",
                    self.state.best_model_checkpoint, self.state.best_metric)
        self._load_weights(self.state.best_model_checkpoint)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._load_weights(resume_from_checkpoint, model)

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        groups = []
        for in_encoder in (True, False):
            lr = self.args.learning_rate * (self.encoder_lr_scale if in_encoder else 1.0)
            for with_decay in (True, False):
                params = [
                    p for n, p in model.named_parameters()
                    if p.requires_grad and n.startswith("encoder.") == in_encoder and (n in decay) == with_decay
                ]
                if params and lr > 0:
                    groups.append({"params": params, "lr": lr, "weight_decay": self.args.weight_decay if with_decay else 0.0})
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer
