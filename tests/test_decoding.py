"""Tests for threshold decoding and tuning (lungsound_ssl.decoding)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics import f1_score

from lungsound_ssl.decoding import (
    DEFAULT_THRESHOLD,
    decode_predictions,
    load_thresholds,
    save_thresholds,
    tune_thresholds,
)
from lungsound_ssl.labels import LABELS

NORMAL, WHEEZE, CRACKLE = (LABELS.index(name) for name in ("normal", "wheeze", "crackle"))


def _labelled_scores(seed: int, n_clips: int = 300, signal: float = 0.35):
    """Random valid labels and probabilities that depend on them (columns in LABELS order)."""
    rng = np.random.default_rng(seed)
    wheeze = rng.random(n_clips) < 0.3
    crackle = rng.random(n_clips) < 0.35
    y = np.zeros((n_clips, 3), dtype=int)
    y[:, WHEEZE] = wheeze
    y[:, CRACKLE] = crackle
    y[:, NORMAL] = ~(wheeze | crackle)
    probs = np.clip(signal * y + rng.random((n_clips, 3)) * (1 - signal), 0.0, 1.0)
    return y, probs


def _naive_f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp = int(((y == 1) & (pred == 1)).sum())
    fp = int(((y == 0) & (pred == 1)).sum())
    fn = int(((y == 1) & (pred == 0)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _naive_youden(y: np.ndarray, pred: np.ndarray) -> float:
    sensitivity = ((pred == 1) & (y == 1)).sum() / (y == 1).sum()
    specificity = ((pred == 0) & (y == 0)).sum() / (y == 0).sum()
    return sensitivity + specificity - 1


def test_decode_hand_cases():
    probs = np.array(
        [
            [0.9, 0.1, 0.1],  # only normal passes -> normal
            [0.1, 0.7, 0.1],  # wheeze passes -> wheeze
            [0.9, 0.7, 0.8],  # both pass, normal too -> both, normal dropped
            [0.2, 0.2, 0.2],  # nothing passes -> normal
            [0.1, 0.1, 0.6],  # crackle passes -> crackle
        ]
    )
    expected = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 1]])
    decoded = decode_predictions(probs, np.full(3, 0.5))
    assert np.array_equal(decoded, expected)


def test_decode_threshold_inclusive():
    decoded = decode_predictions(np.array([[0.0, 0.3, 0.29]]), np.array([0.5, 0.3, 0.3]))
    assert decoded.tolist() == [[0, 1, 0]]


def test_decode_per_label_thresholds():
    probs = np.array([[0.5, 0.4, 0.4]])
    decoded = decode_predictions(probs, np.array([0.5, 0.6, 0.35]))
    assert decoded.tolist() == [[0, 0, 1]]


@pytest.mark.parametrize("seed", range(10))
def test_decode_exclusive_random(seed):
    rng = np.random.default_rng(seed)
    probs = rng.random((2000, 3))
    thresholds = rng.random(3)
    decoded = decode_predictions(probs, thresholds)
    abnormal = (decoded[:, WHEEZE] == 1) | (decoded[:, CRACKLE] == 1)
    assert not ((decoded[:, NORMAL] == 1) & abnormal).any()
    assert (decoded.sum(axis=1) > 0).all()
    assert set(np.unique(decoded)) <= {0, 1}


@pytest.mark.parametrize(
    "probs, thresholds",
    [
        (np.zeros((4, 2)), np.full(3, 0.5)),
        (np.zeros((4, 3)), np.full(2, 0.5)),
        (np.full((1, 3), np.nan), np.full(3, 0.5)),
    ],
)
def test_decode_invalid_input(probs, thresholds):
    with pytest.raises(ValueError):
        decode_predictions(probs, thresholds)


@pytest.mark.parametrize("seed", range(5))
def test_tune_f1_not_worse_than_half(seed):
    y, probs = _labelled_scores(seed)
    thresholds = tune_thresholds(y, probs, criterion="f1")
    for j in range(3):
        tuned = f1_score(y[:, j], probs[:, j] >= thresholds[j])
        at_half = f1_score(y[:, j], probs[:, j] >= 0.5)
        assert tuned >= at_half, LABELS[j]


@pytest.mark.parametrize("seed", range(3))
def test_tune_f1_matches_brute_force(seed):
    y, probs = _labelled_scores(seed, n_clips=120)
    thresholds = tune_thresholds(y, probs, criterion="f1")
    for j in range(3):
        best = max(
            _naive_f1(y[:, j], (probs[:, j] >= t).astype(int)) for t in np.unique(probs[:, j])
        )
        tuned = _naive_f1(y[:, j], (probs[:, j] >= thresholds[j]).astype(int))
        assert tuned == pytest.approx(best), LABELS[j]


@pytest.mark.parametrize("seed", range(3))
def test_tune_youden_matches_brute_force(seed):
    y, probs = _labelled_scores(seed, n_clips=120)
    thresholds = tune_thresholds(y, probs, criterion="youden")
    for j in range(3):
        best = max(
            _naive_youden(y[:, j], (probs[:, j] >= t).astype(int)) for t in np.unique(probs[:, j])
        )
        tuned = _naive_youden(y[:, j], (probs[:, j] >= thresholds[j]).astype(int))
        assert tuned == pytest.approx(best), LABELS[j]


def test_tune_separable_hand_case():
    y = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 1]])
    probs = np.array([[0.8, 0.1, 0.2], [0.7, 0.3, 0.1], [0.2, 0.6, 0.15], [0.1, 0.9, 0.4]])
    thresholds = tune_thresholds(y, probs)
    # The lowest score of the positives separates each label perfectly.
    assert thresholds.tolist() == [0.7, 0.6, 0.4]


def test_tune_fallback_without_positives(caplog):
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])
    probs = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.1], [0.6, 0.2, 0.3], [0.3, 0.8, 0.2]])
    with caplog.at_level(logging.WARNING, logger="lungsound_ssl.decoding"):
        thresholds = tune_thresholds(y, probs)
    assert thresholds[CRACKLE] == DEFAULT_THRESHOLD
    assert "crackle" in caplog.text


def test_tune_fallback_without_negatives(caplog):
    y = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 1]])
    probs = np.array([[0.1, 0.9, 0.8], [0.2, 0.7, 0.1], [0.3, 0.8, 0.6]])
    with caplog.at_level(logging.WARNING, logger="lungsound_ssl.decoding"):
        thresholds = tune_thresholds(y, probs)
    assert thresholds[NORMAL] == DEFAULT_THRESHOLD
    assert thresholds[WHEEZE] == DEFAULT_THRESHOLD
    assert "wheeze" in caplog.text


def test_tune_unknown_criterion():
    y, probs = _labelled_scores(0, n_clips=20)
    with pytest.raises(ValueError, match="criterion"):
        tune_thresholds(y, probs, criterion="accuracy")


def test_thresholds_file_roundtrip(tmp_path):
    thresholds = np.array([0.41, 0.27, 0.635])
    path = save_thresholds(tmp_path / "fold_0" / "thresholds.json", thresholds, "f1")
    assert np.array_equal(load_thresholds(path), thresholds)


def test_thresholds_file_missing_label(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text('{"thresholds": {"normal": 0.5, "wheeze": 0.5}}')
    with pytest.raises(ValueError, match="crackle"):
        load_thresholds(path)
