"""Contrastive self-supervised pretraining of an audio encoder (SimCLR or COLA).

Two random crops of the same clip, each augmented on its own, form a
positive pair; the other clips of the global batch are negatives. The loss
runs on a small projection head over the clip embedding; only the encoder is
kept at the end. Training runs with the Hugging Face ``Trainer``, so it works
under ``accelerate launch`` on CPU, one GPU or many (``NTXentLoss`` gathers
the embeddings of every process with gradients).

Shapes: B clips per process, S samples per crop (16 kHz), D embedding size,
P projection size.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer

from lungsound_ssl.augment import AugmentConfig, SpecAugment, WaveformAugmenter
from lungsound_ssl.cropping import crop_or_pad_batch
from lungsound_ssl.data.table import ClipTable
from lungsound_ssl.encoders import AudioEncoder
from lungsound_ssl.losses import COLALoss, NTXentLoss, ProjectionHead
from lungsound_ssl.probe import health_metrics, linear_probe_auroc

logger = logging.getLogger(__name__)

LOSSES = ("ntxent", "cola")


@dataclass
class PretrainArguments:
    """Options of the contrastive objective, the extra data folders and the health checks."""

    encoder: str = field(
        default="ast-tiny",
        metadata={
            "help": "Encoder preset (ast-tiny, ast-base, wav2vec2-tiny) or a YAML file of EncoderConfig fields."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Start from this encoder: a Hub id, a transformers AST/wav2vec2 directory or an "
            "earlier pretraining output. Empty: random initialisation from --encoder."
        },
    )
    clip_seconds: float | None = field(
        default=None,
        metadata={
            "help": "Crop length in seconds of each view; empty keeps the encoder's clip_seconds."
        },
    )
    extra_data_dirs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "More data folders (any supported layout) whose audio is added to pretraining. "
            "Their labels are never read."
        },
    )
    extra_crop_seconds: float = field(
        default=0.0,
        metadata={
            "help": "Cut each whole recording of --extra_data_dirs into crops of this many seconds "
            "instead of using its annotated clips (cycles, events). 0 uses the annotated clips."
        },
    )
    extra_hop_seconds: float = field(
        default=0.0,
        metadata={
            "help": "Seconds between the starts of two consecutive recording crops; "
            "0 means half of --extra_crop_seconds."
        },
    )
    loss: str = field(
        default="ntxent", metadata={"help": "Contrastive loss: ntxent (SimCLR) or cola (bilinear)."}
    )
    temperature: float = field(
        default=0.1, metadata={"help": "NT-Xent temperature (initial value if learnable)."}
    )
    learnable_temperature: bool = field(
        default=False, metadata={"help": "Learn the NT-Xent temperature."}
    )
    projection_dim: int = field(
        default=128, metadata={"help": "Output size P of the projection head."}
    )
    health_clips: int = field(
        default=256,
        metadata={
            "help": "Clips in the fixed two-view batch of the label-free health check (alignment, "
            "uniformity, contrastive top-1) at each evaluation; 0 disables it."
        },
    )
    norm_stats_clips: int = field(
        default=0,
        metadata={
            "help": "AST trained from scratch only: recompute the log-mel normalisation mean and std "
            "on this many pretraining clips instead of the AudioSet values (0 keeps AudioSet's). "
            "The statistics are saved with the encoder and reused by fine-tuning."
        },
    )
    probe_clips: int = field(
        default=600,
        metadata={
            "help": "Labelled clips of --data_dir for the linear-probe macro AUROC at each evaluation "
            "(0 disables it)."
        },
    )

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {self.loss!r}")
        if isinstance(self.extra_data_dirs, str):
            # A YAML scalar or a single command-line value means one folder.
            self.extra_data_dirs = [self.extra_data_dirs]
        if self.extra_crop_seconds < 0 or self.extra_hop_seconds < 0:
            raise ValueError(
                f"extra_crop_seconds and extra_hop_seconds must be zero or positive; got "
                f"{self.extra_crop_seconds} and {self.extra_hop_seconds}"
            )
        if self.extra_hop_seconds > 0 and self.extra_crop_seconds == 0:
            raise ValueError(
                "extra_hop_seconds needs extra_crop_seconds; set both to cut recordings into crops"
            )
        if self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be positive; got {self.projection_dim}")
        if self.health_clips == 1 or self.health_clips < 0:
            raise ValueError(f"health_clips must be 0 (off) or at least 2; got {self.health_clips}")
        if self.probe_clips < 0:
            raise ValueError(f"probe_clips must be 0 (off) or positive; got {self.probe_clips}")

    @property
    def extra_hop_or_default_seconds(self) -> float:
        """Hop between recording crops, with 0 resolved to half the crop length."""
        return self.extra_hop_seconds if self.extra_hop_seconds > 0 else self.extra_crop_seconds / 2


class ClipAudioDataset(Dataset):
    """Waveforms of selected rows of one or more clip tables.

    Items are ``{"audio": (L,) float32, "index": int}`` where ``index`` is the
    position in this dataset; the collator seeds its random crops from it.
    Labels are not part of the items, so they cannot reach the loss.
    """

    def __init__(self, tables: list[ClipTable], indices: list[np.ndarray]):
        if len(tables) != len(indices):
            raise ValueError(
                f"got {len(tables)} tables but {len(indices)} index arrays; pass one per table"
            )
        # ClipTable.audio converts the whole row to Python objects, about 5 ms per 2.5 s clip. The
        # audio column alone in NumPy format gives the same float32 samples about 15 times faster.
        self._audio_columns = [
            t.dataset.select_columns(["audio"]).with_format("numpy") for t in tables
        ]
        self.items = [(k, int(i)) for k, idx in enumerate(indices) for i in idx]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> dict:
        table_number, row = self.items[position]
        audio = np.asarray(self._audio_columns[table_number][row]["audio"], dtype=np.float32)
        return {"audio": audio, "index": int(position)}


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch operators on one intra-op thread inside the block.

    The augmentations are many small element-wise operators, for which
    OpenMP's fork and join cost more than they save. On busy shared cores a
    two-thread operator also waits for a descheduled thread. Augmenting 32
    two-second crops took a median 0.19 s with 2 threads and 0.04 s with 1
    (2 CPU cores, load average 7). DataLoader workers run with one thread
    anyway, so the collator behaves the same with or without them.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TwoViewCollator:
    """Build two independently cropped and augmented views of every clip in a batch.

    The random state of each batch is seeded from ``seed`` and the ordered
    dataset positions in the batch, not from a running counter. A resumed
    run skips the batches it has already trained on without collating them,
    so a counter would drift, while this seeding gives every batch the same
    views as in an uninterrupted run, with or without DataLoader workers.

    NOTE: a batch with the same positions in the same order gets the same
    views in every epoch. With a shuffled sampler that needs a repeated
    permutation, which is negligible except for a dataset of one batch.

    Returns ``view_a``, ``view_b`` (B, S) float32 and ``mask_a``, ``mask_b``
    (B, S) long, 1 on samples from the clip.
    """

    def __init__(
        self, clip_samples: int, pad_mode: str, fade_samples: int, augment: AugmentConfig, seed: int
    ):
        self.clip_samples = clip_samples
        self.pad_mode = pad_mode
        self.fade_samples = fade_samples
        self.augmenter = WaveformAugmenter(augment)
        self.seed = seed

    def batch_seed(self, positions: list[int]) -> int:
        """Seed of the random crops and augmentations of the batch with these dataset positions."""
        digest = hashlib.sha256(
            np.asarray([self.seed, *positions], dtype=np.int64).tobytes()
        ).digest()
        return int.from_bytes(digest[:8], "little") & (2**63 - 1)

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        seed = self.batch_seed([item["index"] for item in items])
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        waves = [item["audio"] for item in items]
        batch = {}
        with _single_thread(), torch.no_grad():
            for view in ("a", "b"):
                crops, masks = crop_or_pad_batch(
                    waves,
                    self.clip_samples,
                    mode=self.pad_mode,
                    rng=rng,
                    fade_samples=self.fade_samples,
                )
                crops = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))  # (B, S)
                batch[f"view_{view}"] = self.augmenter(crops, generator=generator)
                batch[f"mask_{view}"] = torch.from_numpy(np.asarray(masks)).long()
        return batch


class ContrastiveModel(nn.Module):
    """Encoder, projection head and contrastive loss in one module for the ``Trainer``.

    The loss is computed inside ``forward`` because DistributedDataParallel
    averages the gradients of the parameters used in its forward pass only.
    The loss has parameters of its own (a learnable temperature, COLA's
    bilinear matrix), whose gradients would otherwise differ per process.
    """

    def __init__(self, encoder: AudioEncoder, args: PretrainArguments, augment: AugmentConfig):
        super().__init__()
        self.encoder = encoder
        # LayerNorm rather than BatchNorm in the head: batch statistics differ per process, so
        # BatchNorm would make multi-process training differ from one process on the same batch.
        self.head = ProjectionHead(
            encoder.hidden_size, output_dim=args.projection_dim, norm="layer"
        )
        if args.loss == "ntxent":
            self.loss_fn = NTXentLoss(
                temperature=args.temperature, learnable_temperature=args.learnable_temperature
            )
        else:
            self.loss_fn = COLALoss(args.projection_dim)
        # SpecAugment masks log-mel frames and bins, so it applies to AST's front-end output only.
        use_spec = (
            augment.augment_enabled
            and augment.spec_augment_enabled
            and encoder.config.architecture == "ast"
        )
        self.spec_augment = SpecAugment.from_config(augment) if use_spec else None

    def embed(self, waveforms: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projection-head output for a batch of crops: (B, S) -> (B, P)."""
        transform = self.spec_augment if (self.training and self.spec_augment is not None) else None
        pooled = self.encoder(waveforms, mask, feature_transform=transform).pooled  # (B, D)
        return self.head(pooled)

    def forward(
        self, view_a, mask_a, view_b, mask_b, return_loss: bool = True
    ) -> dict[str, torch.Tensor]:
        """Projections ``z_a``, ``z_b`` (B, P) of both views and, with ``return_loss``, the scalar ``loss``."""
        outputs = {"z_a": self.embed(view_a, mask_a), "z_b": self.embed(view_b, mask_b)}
        if return_loss:
            outputs["loss"] = self.loss_fn(outputs["z_a"], outputs["z_b"])
        return outputs


class ContrastiveTrainer(Trainer):
    """``Trainer`` whose evaluation reports embedding health and a linear probe instead of a loss.

    Args (beyond ``Trainer``'s):
        health_batch: Fixed two-view batch for alignment, uniformity and
            contrastive top-1 accuracy, or None to skip them.
        probe_clips: Labelled clips (a dataset whose items have ``"audio"``)
            for the linear-probe macro AUROC, or None when there are no labels.
        probe_labels: (N, 3) 0/1 labels of ``probe_clips``.
        probe_groups: (N,) group ids (patients) for the probe's grouped split.
    """

    def __init__(
        self,
        *args,
        health_batch=None,
        probe_clips=None,
        probe_labels=None,
        probe_groups=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.health_batch = health_batch
        self.probe_clips = probe_clips
        self.probe_labels = probe_labels
        self.probe_groups = probe_groups
        self.last_eval_step: int | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.n_gpu > 1:
            # torch.nn.DataParallel (several GPUs in one process) runs forward on a slice per GPU, so
            # the loss must run on the gathered outputs to see every slice's embeddings as negatives.
            # NOTE: not yet run on a multi-GPU machine; `accelerate launch` (DDP) is the tested path.
            outputs = model(**inputs, return_loss=False)
            loss = self.accelerator.unwrap_model(model).loss_fn(outputs["z_a"], outputs["z_b"])
        else:
            outputs = model(**inputs)
            loss = outputs["loss"]
        return (loss, outputs) if return_outputs else loss

    def get_decay_parameter_names(self, model) -> list[str]:
        # Weight decay would pull a learnable temperature towards 1 and COLA's bilinear matrix towards 0.
        excluded = ("log_temperature", "bilinear")
        return [n for n in super().get_decay_parameter_names(model) if not n.endswith(excluded)]

    def _compute_eval_metrics(self) -> dict[str, float]:
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        metrics: dict[str, float] = {}
        try:
            if self.health_batch is not None:
                metrics.update(
                    health_metrics(
                        model,
                        self.health_batch,
                        self.args.device,
                        self.args.per_device_eval_batch_size,
                    )
                )
            if self.probe_clips is not None:
                metrics["probe_macro_auroc"] = linear_probe_auroc(
                    model.encoder,
                    self.probe_clips,
                    self.probe_labels,
                    self.probe_groups,
                    batch_size=self.args.per_device_eval_batch_size,
                    device=self.args.device,
                    seed=self.args.seed,
                )
        finally:
            model.train(was_training)
        return metrics

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Compute the health metrics and the probe AUROC on the main process and log them.

        Other processes receive the same numbers, so callbacks see equal metrics everywhere.
        """
        payload = [self._compute_eval_metrics() if self.is_world_process_zero() else None]
        if self.args.world_size > 1:
            broadcast_object_list(payload, from_process=0)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in payload[0].items()}

        described = ", ".join(f"{k} {v:.4f}" for k, v in payload[0].items() if not math.isnan(v))
        logger.info("evaluation at step %d: %s", self.state.global_step, described or "no metrics")
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        self.last_eval_step = self.state.global_step
        return metrics
