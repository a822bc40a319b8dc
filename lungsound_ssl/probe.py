"""Cheap checks of how good an encoder's representations are, used during pretraining.

- ``health_metrics``: label-free. Alignment (mean squared distance between
  the two views of a clip, lower is better), uniformity (log of the mean
  Gaussian potential between clips, lower is better) and the contrastive
  top-1 accuracy of finding a clip's other view among the batch.
- ``linear_probe_auroc``: when labels exist, a logistic regression per label
  on frozen clip embeddings, trained and scored on grouped cross-validation
  folds, gives the macro AUROC over the three labels.

Shapes: N clips, S samples per crop, D embedding size, P projection size.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lungsound_ssl.cropping import crop_or_pad_batch
from lungsound_ssl.labels import LABELS
from lungsound_ssl.losses import embedding_health

logger = logging.getLogger(__name__)

# Grouped folds of the probe. With one 70/30 split of 600 ICBHI clips (about 22 test patients), the
# AUROC of the same features ranged from 0.57 to 0.67 over three split seeds, so folds are averaged.
PROBE_FOLDS = 5


@torch.no_grad()
def health_metrics(
    model, batch: dict[str, torch.Tensor], device, batch_size: int
) -> dict[str, float]:
    """Alignment, uniformity and top-1 accuracy of the projections of a fixed two-view batch.

    ``model.embed`` maps crops (n, S) to projections (n, P). It runs on
    chunks of ``batch_size`` crops, which bounds memory, and the metrics are
    computed on all N pairs at once.
    """
    projections = {}
    for view in ("a", "b"):
        chunks = []
        for start in range(0, batch[f"view_{view}"].shape[0], batch_size):
            crops = batch[f"view_{view}"][start : start + batch_size].to(device)
            masks = batch[f"mask_{view}"][start : start + batch_size].to(device)
            chunks.append(model.embed(crops, masks).float().cpu())
        projections[view] = torch.cat(chunks)  # (N, P)
    return embedding_health(projections["a"], projections["b"])


@torch.no_grad()
def embed_clips(encoder, clips, batch_size: int, device) -> np.ndarray:
    """Clip embeddings of centre crops, padded as the encoder is configured: N clips -> (N, D).

    ``clips`` is a dataset whose items are dicts with an ``"audio"`` waveform.
    NOTE: one centre crop per clip, even when the encoder's ``eval_crop`` is
    ``sliding``, to keep the probe cheap.
    """
    config = encoder.config
    outputs = []
    for start in range(0, len(clips), batch_size):
        waveforms = [clips[i]["audio"] for i in range(start, min(start + batch_size, len(clips)))]
        crops, masks = crop_or_pad_batch(
            waveforms,
            config.clip_samples,
            mode=config.pad_mode,
            rng=None,
            fade_samples=config.fade_samples,
        )
        crops = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)).to(device)  # (n, S)
        masks = torch.from_numpy(np.asarray(masks)).long().to(device)
        outputs.append(encoder(crops, masks).pooled.float().cpu().numpy())
    return np.concatenate(outputs)


def linear_probe_auroc(
    encoder,
    clips,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    batch_size: int,
    device,
    seed: int = 0,
) -> float:
    """Macro AUROC of per-label logistic regressions on frozen embeddings, over grouped folds.

    Each of ``PROBE_FOLDS`` folds holds out its groups; a label counts in a
    fold when both classes occur on both sides. The result is the mean over
    folds of the fold's mean AUROC over its counted labels.

    Args:
        encoder: ``AudioEncoder`` to probe; it is used as it is (call ``eval()`` first).
        clips: Dataset of N labelled clips, items with an ``"audio"`` waveform.
        labels: (N, 3) 0/1 labels in ``LABELS`` order.
        groups: (N,) group ids; no group is split between the two sides of a fold.
        seed: Seed of the fold assignment, so every evaluation of a run uses the same folds.

    Returns:
        The macro AUROC, or NaN when no fold has a label with both classes on both sides.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    n_folds = min(PROBE_FOLDS, len(np.unique(groups)))
    if n_folds < 2:
        logger.info(
            "linear probe: the %d clips come from one group, so no grouped split exists; skipped",
            len(groups),
        )
        return float("nan")
    embeddings = embed_clips(encoder, clips, batch_size, device)
    folds = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)

    fold_scores = []
    for train, test in folds.split(embeddings, groups=groups):
        scores = []
        for column, name in enumerate(LABELS):
            y_train, y_test = labels[train, column], labels[test, column]
            if len(np.unique(y_train)) < 2 or len(np.unique(y_test)) < 2:
                logger.debug(
                    "linear probe: label %s has one class on a side of a fold; skipped", name
                )
                continue
            probe = make_pipeline(
                StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced", C=0.1)
            )
            probe.fit(embeddings[train], y_train)
            scores.append(roc_auc_score(y_test, probe.predict_proba(embeddings[test])[:, 1]))
        if scores:
            fold_scores.append(np.mean(scores))
    return float(np.mean(fold_scores)) if fold_scores else float("nan")
