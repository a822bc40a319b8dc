"""Turn per-label probabilities into labels that respect the label rule.

A clip is either normal or has wheeze, crackle or both, and normal never
co-occurs with an adventitious sound. Decoding thresholds wheeze and crackle, then sets
normal exactly when neither is present, so every decoded row is one of the four
ICBHI classes (normal, crackle, wheeze, both). Per-label thresholds are tuned
on the inner validation split and saved beside the model as JSON.

Shapes: N clips, 3 labels in ``LABELS`` order (normal, wheeze, crackle).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from lungsound_ssl.labels import LABELS

logger = logging.getLogger(__name__)

NORMAL = LABELS.index("normal")
WHEEZE = LABELS.index("wheeze")
CRACKLE = LABELS.index("crackle")

DEFAULT_THRESHOLD = 0.5
CRITERIA = ("f1", "youden")
# File name of the tuned thresholds inside a fold's model folder.
THRESHOLDS_FILE = "thresholds.json"


def _check_label_matrix(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] != len(LABELS):
        raise ValueError(
            f"{name} has shape {array.shape}; expected (N, {len(LABELS)}) in the order {LABELS}"
        )
    return array


def decode_predictions(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Decode probabilities into 0/1 labels that obey the label rule.

    Rule: wheeze and crackle are each 1 when their probability is at or above
    their threshold (the ``>=`` convention of scikit-learn's curve thresholds).
    Normal is 1 exactly when neither wheeze nor crackle is 1. So an adventitious
    sound that passes its threshold overrides normal, and a clip where nothing
    passes is called normal. Every output row is therefore one of the four ICBHI
    classes, and no row is all zeros.

    NOTE: under this rule the normal probability and the normal threshold do
    not change the decoded labels. They are still scored as a separate label
    (AUROC, average precision) in ``lungsound_ssl.metrics``.

    Args:
        probs: Probabilities, shape (N, 3).
        thresholds: Per-label thresholds, shape (3,).

    Returns:
        Integer array of shape (N, 3) with values 0 or 1.

    Raises:
        ValueError: if the shapes do not match ``LABELS`` or a value is NaN.
    """
    probs = _check_label_matrix("probs", probs).astype(float)
    thresholds = np.asarray(thresholds, dtype=float)
    if thresholds.shape != (len(LABELS),):
        raise ValueError(
            f"thresholds has shape {thresholds.shape}; expected ({len(LABELS)},) in the order {LABELS}"
        )
    if np.isnan(probs).any() or np.isnan(thresholds).any():
        raise ValueError("probs and thresholds must not contain NaN; check the model outputs")

    passes = probs >= thresholds  # (N, 3) -> bool per label
    decoded = np.zeros(probs.shape, dtype=int)
    decoded[:, WHEEZE] = passes[:, WHEEZE]
    decoded[:, CRACKLE] = passes[:, CRACKLE]
    decoded[:, NORMAL] = ~(passes[:, WHEEZE] | passes[:, CRACKLE])
    return decoded


def _best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(y, scores)
    # The last precision/recall pair (recall 0) has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    return float(thresholds[int(np.argmax(f1))])


def _best_youden_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr, thresholds = roc_curve(y, scores, drop_intermediate=False)
    # The first ROC threshold is +inf (nothing predicted positive), so it is not a usable cut-off.
    finite = np.isfinite(thresholds)
    youden_j = (tpr - fpr)[finite]
    return float(thresholds[finite][int(np.argmax(youden_j))])


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray, criterion: str = "f1") -> np.ndarray:
    """Choose one threshold per label that maximises a criterion on validation data.

    Candidates are the distinct scores that scikit-learn's
    ``precision_recall_curve`` (for ``"f1"``) or ``roc_curve`` (for
    ``"youden"``, Youden's J = sensitivity + specificity - 1) return. Each label
    is tuned on its own, as a binary problem. Ties go to the first candidate
    scikit-learn lists: the lowest threshold for F1, the highest for Youden's J.
    A label with no positive or no negative clip keeps 0.5, with a warning,
    because neither criterion is defined there.

    Args:
        y_true: True 0/1 labels, shape (N, 3).
        probs: Probabilities, shape (N, 3).
        criterion: ``"f1"`` or ``"youden"``.

    Returns:
        Thresholds, shape (3,), in ``LABELS`` order.

    Raises:
        ValueError: if the criterion is unknown or the shapes do not match.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown threshold criterion {criterion!r}; use one of {CRITERIA}")
    y_true = _check_label_matrix("y_true", y_true).astype(int)
    probs = _check_label_matrix("probs", probs).astype(float)
    if y_true.shape != probs.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but probs has shape {probs.shape}")

    thresholds = np.full(len(LABELS), DEFAULT_THRESHOLD)
    for j, label in enumerate(LABELS):
        n_positive = int(y_true[:, j].sum())
        n_negative = len(y_true) - n_positive
        if n_positive == 0 or n_negative == 0:
            logger.warning(
                "label %s has %d positive and %d negative validation clips; keeping threshold %.2f",
                label,
                n_positive,
                n_negative,
                DEFAULT_THRESHOLD,
            )
            continue
        if criterion == "f1":
            thresholds[j] = _best_f1_threshold(y_true[:, j], probs[:, j])
        else:
            thresholds[j] = _best_youden_threshold(y_true[:, j], probs[:, j])
    return thresholds


def save_thresholds(path: str | Path, thresholds: np.ndarray, criterion: str) -> Path:
    """Write thresholds as JSON ``{"criterion": ..., "thresholds": {label: value}}``."""
    thresholds = np.asarray(thresholds, dtype=float)
    if thresholds.shape != (len(LABELS),):
        raise ValueError(f"thresholds has shape {thresholds.shape}; expected ({len(LABELS)},)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {
        "criterion": criterion,
        "labels": list(LABELS),
        "thresholds": {label: float(t) for label, t in zip(LABELS, thresholds)},
        "rule": "wheeze/crackle = prob >= threshold; normal = neither wheeze nor crackle",
    }
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def load_thresholds(path: str | Path) -> np.ndarray:
    """Read thresholds written by ``save_thresholds`` as an array of shape (3,) in ``LABELS`` order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a label is missing from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"thresholds file not found: {path}")
    values = json.loads(path.read_text()).get("thresholds", {})
    missing = [label for label in LABELS if label not in values]
    if missing:
        raise ValueError(
            f"{path} has no threshold for {', '.join(missing)}; rewrite it with save_thresholds"
        )
    return np.array([float(values[label]) for label in LABELS])
