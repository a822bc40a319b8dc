"""Scores for multi-label lung-sound predictions, per label and as ICBHI classes.

``compute_metrics`` returns a JSON-serialisable dict that a fold writes to
metrics.json. A metric that is undefined on the given clips (AUROC with one
class only, sensitivity without positives) is ``None`` and comes with a note,
never a silent 0. The ICBHI 2017 challenge score maps each clip to one of
``CLASSES_4`` (normal, crackle, wheeze, both) from its wheeze and crackle
flags. Specificity is the share of normal clips predicted normal, sensitivity
the share of abnormal clips predicted as exactly their class, and the score is
the mean of the two.

Shapes: N clips, 3 labels in ``LABELS`` order (normal, wheeze, crackle).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from lungsound_ssl.labels import CLASSES_4, LABELS, class_4_index

logger = logging.getLogger(__name__)

WHEEZE = LABELS.index("wheeze")
CRACKLE = LABELS.index("crackle")
NORMAL_CLASS = CLASSES_4.index("normal")

# Dotted keys of compute_metrics' output that the summary bootstraps and the
# model card reports, in the order of the card's table.
HEADLINE_METRICS: tuple[str, ...] = (
    "icbhi_4class.score",
    "icbhi_4class.sensitivity",
    "icbhi_4class.specificity",
    "icbhi_2class.score",
    "icbhi_2class.sensitivity",
    "icbhi_2class.specificity",
    "macro_f1",
    "macro_auroc",
    *(
        f"per_label.{label}.{name}"
        for label in LABELS
        for name in ("auroc", "average_precision", "f1")
    ),
    *(f"per_label.{label}.{name}" for label in LABELS for name in ("sensitivity", "specificity")),
)


def labels_to_class_4(y: np.ndarray) -> np.ndarray:
    """Map 0/1 label rows, shape (N, 3), to indices into ``CLASSES_4``, shape (N,).

    Only the wheeze and crackle flags decide the class, as in the ICBHI
    challenge. A row with normal set and no adventitious sound is normal.
    """
    y = _check_label_matrix("y", y)
    lookup = np.array([[class_4_index(w, c) for c in (0, 1)] for w in (0, 1)])  # [wheeze, crackle]
    return lookup[y[:, WHEEZE].astype(int), y[:, CRACKLE].astype(int)]


def _as_class_indices(name: str, classes: Sequence) -> np.ndarray:
    values = np.asarray(classes)
    if values.ndim != 1:
        raise ValueError(f"{name} must be one class per clip, got shape {values.shape}")
    if values.dtype.kind in "US" or values.dtype == object:
        unknown = sorted({str(v) for v in values} - set(CLASSES_4))
        if unknown:
            raise ValueError(
                f"{name} contains unknown class(es) {unknown}; expected names from {CLASSES_4}"
            )
        return np.array([CLASSES_4.index(str(v)) for v in values], dtype=int)
    values = values.astype(int)
    if values.size and (values.min() < 0 or values.max() >= len(CLASSES_4)):
        raise ValueError(
            f"{name} contains indices outside 0..{len(CLASSES_4) - 1} (the order of {CLASSES_4})"
        )
    return values


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _mean_of_two(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (a + b) / 2


def _check_class_pair(
    true_classes: Sequence, pred_classes: Sequence
) -> tuple[np.ndarray, np.ndarray]:
    true_idx = _as_class_indices("true_classes", true_classes)
    pred_idx = _as_class_indices("pred_classes", pred_classes)
    if true_idx.shape != pred_idx.shape:
        raise ValueError(
            f"true_classes has {len(true_idx)} clips but pred_classes has {len(pred_idx)}"
        )
    return true_idx, pred_idx


def icbhi_score(true_classes: Sequence, pred_classes: Sequence) -> dict[str, float | None]:
    """Compute the ICBHI 2017 four-class score.

    Specificity = normal clips predicted normal / normal clips. Sensitivity =
    abnormal clips (crackle, wheeze, both) predicted as exactly their class /
    abnormal clips, so a "both" clip predicted "wheeze" counts as a miss. The
    score is the mean of the two. A part is None when the clips contain no
    normal (or no abnormal) clip, and the score is then None too.

    Args:
        true_classes: Class per clip, as names from ``CLASSES_4`` or indices into it.
        pred_classes: Predicted class per clip, same form.

    Returns:
        ``{"sensitivity", "specificity", "score"}``.
    """
    true_idx, pred_idx = _check_class_pair(true_classes, pred_classes)
    normal = true_idx == NORMAL_CLASS
    specificity = _ratio(int((pred_idx[normal] == NORMAL_CLASS).sum()), int(normal.sum()))
    sensitivity = _ratio(int((pred_idx[~normal] == true_idx[~normal]).sum()), int((~normal).sum()))
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "score": _mean_of_two(sensitivity, specificity),
    }


def icbhi_score_2class(true_classes: Sequence, pred_classes: Sequence) -> dict[str, float | None]:
    """Compute the two-class (normal vs abnormal) version of the ICBHI score.

    Any abnormal class predicted for an abnormal clip counts as correct, so
    sensitivity = abnormal clips predicted abnormal / abnormal clips.
    Specificity is the same as in ``icbhi_score``. Inputs and output are as in
    ``icbhi_score``.
    """
    true_idx, pred_idx = _check_class_pair(true_classes, pred_classes)
    normal = true_idx == NORMAL_CLASS
    specificity = _ratio(int((pred_idx[normal] == NORMAL_CLASS).sum()), int(normal.sum()))
    sensitivity = _ratio(int((pred_idx[~normal] != NORMAL_CLASS).sum()), int((~normal).sum()))
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "score": _mean_of_two(sensitivity, specificity),
    }


def _check_label_matrix(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] != len(LABELS):
        raise ValueError(
            f"{name} has shape {array.shape}; expected (N, {len(LABELS)}) in the order {LABELS}"
        )
    return array


def _nan_to_none(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _label_metrics(y: np.ndarray, scores: np.ndarray, pred: np.ndarray) -> dict:
    n_positive = int(y.sum())
    n_negative = int(len(y) - n_positive)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    notes = []

    auroc = None
    if n_positive and n_negative:
        auroc = float(roc_auc_score(y, scores))
    else:
        notes.append("auroc undefined: the clips contain only one class")
    average_precision = None
    if n_positive:
        average_precision = float(average_precision_score(y, scores))
    else:
        notes.append("average_precision and sensitivity undefined: no positive clip")
    if not n_negative:
        notes.append("specificity undefined: no negative clip")

    # zero_division=nan makes a ratio with a zero denominator None rather than 0:
    # precision without positive predictions, sensitivity without positive clips,
    # F1 with neither.
    precision, sensitivity, f1, _ = precision_recall_fscore_support(
        y, pred, average="binary", zero_division=np.nan
    )
    metrics = {
        "auroc": auroc,
        "average_precision": average_precision,
        "f1": _nan_to_none(f1),
        "precision": _nan_to_none(precision),
        "sensitivity": _nan_to_none(sensitivity),
        "specificity": _ratio(tn, tn + fp),
        "n_positive": n_positive,
        "n_negative": n_negative,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
    if metrics["f1"] is None:
        notes.append("f1 undefined: no positive clip and no positive prediction")
    elif metrics["precision"] is None:
        notes.append("precision undefined: no positive prediction")
    if notes:
        metrics["notes"] = notes
    return metrics


def _mean_of_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _is_known_device(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return str(value).strip() not in ("", "nan", "None")


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    y_pred: np.ndarray,
    devices: Sequence[str] | None = None,
) -> dict:
    """Score decoded predictions against true labels.

    Args:
        y_true: True 0/1 labels, shape (N, 3).
        probs: Probabilities, shape (N, 3); used by AUROC and average precision.
        y_pred: Decoded 0/1 labels at the tuned thresholds, shape (N, 3).
        devices: Optional recording device per clip. Clips with an empty or
            missing device are left out of the per-device breakdown.

    Returns:
        A JSON-serialisable dict with these keys:

        - ``n_clips`` and ``labels``.
        - ``per_label``: per label auroc, average_precision, f1, precision,
          sensitivity, specificity, n_positive, n_negative, tp, fp, tn, fn, and
          ``notes`` naming the undefined values.
        - ``macro_f1`` and ``macro_auroc``: means over the labels where the value
          is defined. Those labels are listed in ``macro_f1_labels`` and
          ``macro_auroc_labels``.
        - ``icbhi_4class`` and ``icbhi_2class``: sensitivity, specificity, score.
        - ``confusion_matrix_4class``: rows are true classes and columns
          predicted ones, both in ``CLASSES_4`` order.
        - ``per_device`` (only when devices are given): the same metrics per device.

    Raises:
        ValueError: if the shapes disagree, there are no clips or a label is not 0/1.
    """
    y_true = _check_label_matrix("y_true", y_true)
    probs = _check_label_matrix("probs", probs).astype(float)
    y_pred = _check_label_matrix("y_pred", y_pred)
    if not (len(y_true) == len(probs) == len(y_pred)):
        raise ValueError(
            f"y_true, probs and y_pred have {len(y_true)}, {len(probs)} and {len(y_pred)} rows"
        )
    if len(y_true) == 0:
        raise ValueError("no clips to score; check that the held-out split is not empty")
    for name, array in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"{name} must contain only 0 and 1")
    y_true = y_true.astype(int)
    y_pred = y_pred.astype(int)

    per_label = {
        label: _label_metrics(y_true[:, j], probs[:, j], y_pred[:, j])
        for j, label in enumerate(LABELS)
    }
    f1_labels = [label for label in LABELS if per_label[label]["f1"] is not None]
    auroc_labels = [label for label in LABELS if per_label[label]["auroc"] is not None]

    true_classes = labels_to_class_4(y_true)
    pred_classes = labels_to_class_4(y_pred)
    matrix = confusion_matrix(true_classes, pred_classes, labels=list(range(len(CLASSES_4))))

    metrics = {
        "n_clips": len(y_true),
        "labels": list(LABELS),
        "per_label": per_label,
        "macro_f1": _mean_of_defined([per_label[label]["f1"] for label in f1_labels]),
        "macro_f1_labels": f1_labels,
        "macro_auroc": _mean_of_defined([per_label[label]["auroc"] for label in auroc_labels]),
        "macro_auroc_labels": auroc_labels,
        "icbhi_4class": icbhi_score(true_classes, pred_classes),
        "icbhi_2class": icbhi_score_2class(true_classes, pred_classes),
        "confusion_matrix_4class": {"labels": list(CLASSES_4), "matrix": matrix.tolist()},
    }

    if devices is not None:
        devices = list(devices)
        if len(devices) != len(y_true):
            raise ValueError(f"devices has {len(devices)} values but there are {len(y_true)} clips")
        known = np.array([_is_known_device(d) for d in devices], dtype=bool)
        if (~known).any():
            logger.info(
                "%d of %d clips have no device; they are left out of per_device",
                (~known).sum(),
                len(devices),
            )
        names = np.array([str(d).strip() for d in devices], dtype=object)
        metrics["per_device"] = {}
        for device in sorted(set(names[known])):
            mask = known & (names == device)
            metrics["per_device"][device] = compute_metrics(y_true[mask], probs[mask], y_pred[mask])
    return metrics


def flatten_metrics(metrics: Mapping, prefix: str = "") -> dict[str, float]:
    """Flatten nested metrics into ``{"a.b.c": number}`` for aggregation across folds.

    Numbers are kept, and numeric lists (the confusion matrix) get their index
    as a key part. None, NaN, booleans and text are dropped, so an undefined
    metric simply has no key.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat.update(
                flatten_metrics({str(i): v for i, v in enumerate(value)}, prefix=f"{name}.")
            )
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, (int, float, np.integer, np.floating)) and not math.isnan(
            float(value)
        ):
            flat[name] = float(value)
    return flat


def _group_index_lists(groups: Sequence) -> list[np.ndarray]:
    groups = np.asarray([str(g) for g in groups])
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    boundaries = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, boundaries)


def _interval(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "low": None, "high": None, "n_valid": 0}
    low, high = np.percentile(values, [2.5, 97.5])
    return {
        "mean": float(np.mean(values)),
        "low": float(low),
        "high": float(high),
        "n_valid": len(values),
    }


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    y_pred: np.ndarray,
    groups: Sequence,
    metric_fn: Callable[[np.ndarray, np.ndarray, np.ndarray], float | None | Mapping[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Estimate a 95% percentile interval by resampling groups (patients) with replacement.

    Each draw picks as many groups as there are, with replacement, and scores
    all clips of the picked groups, so clips of one patient stay together.
    This is hand-written because scikit-learn has no cluster bootstrap and
    ``scipy.stats.bootstrap`` resamples single observations. Draws where the
    metric is undefined (None or NaN, e.g. AUROC on a draw with one class) are
    skipped and not counted in ``n_valid``.

    Args:
        y_true, probs, y_pred: Arrays with N rows, passed sliced to ``metric_fn``.
        groups: Group id per clip, length N.
        metric_fn: ``metric_fn(y_true, probs, y_pred)`` returning a number, or
            a mapping of names to numbers to get one interval per name from the
            same draws.
        n_boot: Number of draws.
        seed: Seed of the numpy random generator.

    Returns:
        ``{"mean", "low", "high", "n_valid"}`` (mean of the draws, 2.5th and
        97.5th percentiles), or for a mapping metric ``{name: {...}}``. A
        metric with no valid draw has None values.

    Raises:
        ValueError: if ``groups`` does not have N values or ``n_boot`` < 1.
    """
    y_true, probs, y_pred = np.asarray(y_true), np.asarray(probs), np.asarray(y_pred)
    groups = list(groups)
    if not (len(groups) == len(y_true) == len(probs) == len(y_pred)):
        raise ValueError(
            f"groups, y_true, probs and y_pred must have one row per clip; "
            f"got {len(groups)}, {len(y_true)}, {len(probs)} and {len(y_pred)}"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")

    index_lists = _group_index_lists(groups)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    returns_mapping = False
    for _ in range(n_boot):
        picked = rng.integers(0, len(index_lists), size=len(index_lists))
        rows = np.concatenate([index_lists[g] for g in picked])
        value = metric_fn(y_true[rows], probs[rows], y_pred[rows])
        if isinstance(value, Mapping):
            returns_mapping = True
            items = value.items()
        else:
            items = [("value", value)]
        for name, number in items:
            bucket = draws.setdefault(name, [])
            if number is not None and not math.isnan(float(number)):
                bucket.append(float(number))

    if returns_mapping:
        return {name: _interval(values) for name, values in draws.items()}
    return _interval(draws.get("value", []))
