"""Tests for the ICBHI score, per-label metrics and the bootstrap (lungsound_ssl.metrics)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from lungsound_ssl.labels import CLASSES_4, LABELS
from lungsound_ssl.metrics import (
    bootstrap_ci,
    compute_metrics,
    flatten_metrics,
    icbhi_score,
    icbhi_score_2class,
    labels_to_class_4,
)

NORMAL, WHEEZE, CRACKLE = (LABELS.index(name) for name in ("normal", "wheeze", "crackle"))

# Hand-worked ICBHI case: 4 normal clips, 6 abnormal ones.
HAND_TRUE = [
    "normal",
    "normal",
    "normal",
    "normal",
    "crackle",
    "crackle",
    "wheeze",
    "both",
    "both",
    "wheeze",
]
HAND_PRED = [
    "normal",
    "normal",
    "crackle",
    "normal",
    "crackle",
    "both",
    "wheeze",
    "both",
    "wheeze",
    "normal",
]


def _labels_from_classes(names: list[str]) -> np.ndarray:
    rows = {"normal": [1, 0, 0], "wheeze": [0, 1, 0], "crackle": [0, 0, 1], "both": [0, 1, 1]}
    return np.array([rows[name] for name in names])


def _random_run(seed: int, n_clips: int = 200):
    """Valid labels, continuous probabilities (no ties) and decoded predictions."""
    rng = np.random.default_rng(seed)
    wheeze = rng.random(n_clips) < 0.3
    crackle = rng.random(n_clips) < 0.35
    y = np.stack([~(wheeze | crackle), wheeze, crackle], axis=1).astype(int)
    probs = np.clip(0.3 * y + 0.7 * rng.random((n_clips, 3)), 0.0, 1.0)
    pred = np.zeros_like(y)
    pred[:, WHEEZE] = probs[:, WHEEZE] >= 0.5
    pred[:, CRACKLE] = probs[:, CRACKLE] >= 0.5
    pred[:, NORMAL] = (pred[:, WHEEZE] == 0) & (pred[:, CRACKLE] == 0)
    return y, probs, pred


def _naive_auroc(y: np.ndarray, scores: np.ndarray) -> float:
    positives, negatives = scores[y == 1], scores[y == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def _naive_average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    # Mean of the precision at the rank of each positive; exact when scores have no ties.
    order = np.argsort(-scores)
    hits = y[order]
    precisions = [hits[: k + 1].sum() / (k + 1) for k in range(len(hits)) if hits[k]]
    return float(np.mean(precisions))


def test_class_4_mapping_hand_cases():
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 1]])
    names = [CLASSES_4[i] for i in labels_to_class_4(y)]
    assert names == ["normal", "wheeze", "crackle", "both"]


def test_class_4_mapping_indices():
    y = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1]])
    assert labels_to_class_4(y).tolist() == [0, 1, 2, 3]


def test_icbhi_4class_hand_case():
    result = icbhi_score(HAND_TRUE, HAND_PRED)
    # Sp: 3 of 4 normals kept normal. Se: crackle, wheeze and one both exact = 3 of 6.
    assert result["specificity"] == pytest.approx(3 / 4)
    assert result["sensitivity"] == pytest.approx(3 / 6)
    assert result["score"] == pytest.approx((3 / 4 + 3 / 6) / 2)


def test_icbhi_2class_hand_case():
    result = icbhi_score_2class(HAND_TRUE, HAND_PRED)
    # Only the wheeze clip predicted normal is a miss: 5 of 6 abnormal clips flagged.
    assert result["specificity"] == pytest.approx(3 / 4)
    assert result["sensitivity"] == pytest.approx(5 / 6)
    assert result["score"] == pytest.approx((3 / 4 + 5 / 6) / 2)


def test_icbhi_indices_equal_names():
    true_idx = [CLASSES_4.index(name) for name in HAND_TRUE]
    pred_idx = [CLASSES_4.index(name) for name in HAND_PRED]
    assert icbhi_score(true_idx, pred_idx) == icbhi_score(HAND_TRUE, HAND_PRED)


def test_icbhi_perfect_and_all_normal():
    assert icbhi_score(HAND_TRUE, HAND_TRUE)["score"] == 1.0
    all_normal = icbhi_score(HAND_TRUE, ["normal"] * len(HAND_TRUE))
    assert all_normal == {"sensitivity": 0.0, "specificity": 1.0, "score": 0.5}


def test_icbhi_without_normals():
    result = icbhi_score(["wheeze", "both"], ["wheeze", "crackle"])
    assert result["specificity"] is None
    assert result["sensitivity"] == 0.5
    assert result["score"] is None


def test_icbhi_unknown_class():
    with pytest.raises(ValueError, match="rhonchi"):
        icbhi_score(["normal", "rhonchi"], ["normal", "normal"])


def test_metrics_icbhi_from_labels():
    y_true = _labels_from_classes(HAND_TRUE)
    y_pred = _labels_from_classes(HAND_PRED)
    probs = y_pred * 0.8 + 0.1
    metrics = compute_metrics(y_true, probs, y_pred)
    assert metrics["icbhi_4class"]["score"] == pytest.approx(0.625)
    assert metrics["icbhi_2class"]["sensitivity"] == pytest.approx(5 / 6)


def test_metrics_confusion_matrix_hand_case():
    metrics = compute_metrics(
        _labels_from_classes(HAND_TRUE), np.full((10, 3), 0.5), _labels_from_classes(HAND_PRED)
    )
    # Rows true, columns predicted, order normal, crackle, wheeze, both.
    expected = [
        [3, 1, 0, 0],
        [0, 1, 0, 1],
        [1, 0, 1, 0],
        [0, 0, 1, 1],
    ]
    assert metrics["confusion_matrix_4class"] == {"labels": list(CLASSES_4), "matrix": expected}


@pytest.mark.parametrize("seed", range(3))
def test_per_label_matches_naive(seed):
    y, probs, pred = _random_run(seed)
    metrics = compute_metrics(y, probs, pred)
    for j, label in enumerate(LABELS):
        values = metrics["per_label"][label]
        tp = int(((y[:, j] == 1) & (pred[:, j] == 1)).sum())
        fp = int(((y[:, j] == 0) & (pred[:, j] == 1)).sum())
        tn = int(((y[:, j] == 0) & (pred[:, j] == 0)).sum())
        fn = int(((y[:, j] == 1) & (pred[:, j] == 0)).sum())
        assert (values["tp"], values["fp"], values["tn"], values["fn"]) == (tp, fp, tn, fn), label
        assert values["sensitivity"] == pytest.approx(tp / (tp + fn)), label
        assert values["specificity"] == pytest.approx(tn / (tn + fp)), label
        assert values["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn)), label
        assert values["auroc"] == pytest.approx(_naive_auroc(y[:, j], probs[:, j])), label
        assert values["average_precision"] == pytest.approx(
            _naive_average_precision(y[:, j], probs[:, j])
        ), label
        assert values["n_positive"] == int(y[:, j].sum()), label


@pytest.mark.parametrize("seed", range(3))
def test_macro_scores_match_reference(seed):
    y, probs, pred = _random_run(seed)
    metrics = compute_metrics(y, probs, pred)
    naive_auroc = np.mean([_naive_auroc(y[:, j], probs[:, j]) for j in range(3)])
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert metrics["macro_auroc"] == pytest.approx(naive_auroc)


def test_metrics_undefined_auroc():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])  # no crackle clip
    probs = np.array([[0.8, 0.1, 0.3], [0.2, 0.9, 0.1], [0.7, 0.2, 0.6]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    metrics = compute_metrics(y, probs, pred)
    crackle = metrics["per_label"]["crackle"]
    assert crackle["auroc"] is None
    assert crackle["sensitivity"] is None
    assert any("auroc undefined" in note for note in crackle["notes"])
    assert metrics["macro_auroc_labels"] == ["normal", "wheeze"]
    assert metrics["macro_auroc"] == pytest.approx(np.mean([1.0, 1.0]))


def test_metrics_json_serialisable():
    y, probs, pred = _random_run(0, n_clips=60)
    devices = ["Meditron", "LittC2SE", ""] * 20
    text = json.dumps(compute_metrics(y, probs, pred, devices=devices))
    assert json.loads(text)["n_clips"] == 60


def test_per_device_matches_subsets():
    y, probs, pred = _random_run(1, n_clips=90)
    devices = np.array(["A", "B", ""] * 30)
    metrics = compute_metrics(y, probs, pred, devices=list(devices))
    assert sorted(metrics["per_device"]) == ["A", "B"]
    mask = devices == "B"
    assert metrics["per_device"]["B"] == compute_metrics(y[mask], probs[mask], pred[mask])


def test_metrics_invalid_shapes():
    y, probs, pred = _random_run(0, n_clips=10)
    with pytest.raises(ValueError):
        compute_metrics(y, probs[:, :2], pred)
    with pytest.raises(ValueError):
        compute_metrics(y, probs, pred[:5])


def test_flatten_metrics_hand_case():
    nested = {
        "a": {"b": 0.5, "c": None, "d": [[1, 2], [3, 4]]},
        "e": "text",
        "f": True,
        "g": float("nan"),
        "h": 3,
    }
    assert flatten_metrics(nested) == {
        "a.b": 0.5,
        "a.d.0.0": 1.0,
        "a.d.0.1": 2.0,
        "a.d.1.0": 3.0,
        "a.d.1.1": 4.0,
        "h": 3.0,
    }


def test_bootstrap_keeps_groups_together():
    # Every group has two clips, and y_true stores the group number.
    n_groups = 30
    groups = np.repeat([f"patient_{g}" for g in range(n_groups)], 2)
    y = np.repeat(np.arange(n_groups), 2)[:, None].repeat(3, axis=1)

    def whole_groups(y_true, probs, y_pred):
        _, counts = np.unique(y_true[:, 0], return_counts=True)
        return float((counts % 2 == 0).all())

    result = bootstrap_ci(y, y, y, groups, whole_groups, n_boot=50)
    assert result["mean"] == 1.0


def test_bootstrap_interval_contains_estimate():
    y, probs, pred = _random_run(2, n_clips=150)
    groups = [f"p{i // 3}" for i in range(150)]

    def wheeze_f1(y_true, probs_, y_pred):
        return f1_score(y_true[:, WHEEZE], y_pred[:, WHEEZE])

    estimate = wheeze_f1(y, probs, pred)
    result = bootstrap_ci(y, probs, pred, groups, wheeze_f1, n_boot=200, seed=1)
    assert result["low"] <= estimate <= result["high"]
    assert result["high"] - result["low"] < 0.5
    assert result["n_valid"] == 200


def test_bootstrap_same_seed_same_result():
    y, probs, pred = _random_run(3, n_clips=60)
    groups = [f"p{i // 2}" for i in range(60)]

    def macro_f1(y_true, probs_, y_pred):
        return f1_score(y_true, y_pred, average="macro", zero_division=0)

    first = bootstrap_ci(y, probs, pred, groups, macro_f1, n_boot=30, seed=7)
    second = bootstrap_ci(y, probs, pred, groups, macro_f1, n_boot=30, seed=7)
    assert first == second


def test_bootstrap_skips_undefined_draws():
    n_clips = 40
    y = np.zeros((n_clips, 3), dtype=int)
    y[0, CRACKLE] = 1  # one positive: most draws miss it and AUROC is undefined
    probs = np.linspace(0, 1, n_clips)[:, None].repeat(3, axis=1)
    groups = [str(i) for i in range(n_clips)]

    def crackle_auroc(y_true, probs_, y_pred):
        return compute_metrics(y_true, probs_, y_pred)["per_label"]["crackle"]["auroc"]

    result = bootstrap_ci(y, probs, y, groups, crackle_auroc, n_boot=40)
    assert 0 < result["n_valid"] < 40


def test_bootstrap_mapping_metric():
    y, probs, pred = _random_run(4, n_clips=60)
    groups = [f"p{i // 3}" for i in range(60)]

    def two_scores(y_true, probs_, y_pred):
        metrics = compute_metrics(y_true, probs_, y_pred)
        return {"score": metrics["icbhi_4class"]["score"], "macro_f1": metrics["macro_f1"]}

    result = bootstrap_ci(y, probs, pred, groups, two_scores, n_boot=20)
    assert sorted(result) == ["macro_f1", "score"]
    assert result["score"]["low"] <= result["score"]["high"]


def test_bootstrap_length_mismatch():
    y, probs, pred = _random_run(0, n_clips=10)
    with pytest.raises(ValueError, match="one row per clip"):
        bootstrap_ci(y, probs, pred, ["a"] * 9, lambda *arrays: 0.0, n_boot=5)


@pytest.mark.real_data
def test_metrics_real_icbhi_labels(icbhi_cycles_dir):
    labels = pd.read_csv(icbhi_cycles_dir / "train.csv")
    meta = pd.read_csv(icbhi_cycles_dir / "metadata.csv", dtype={"patient_id": str}).set_index(
        "filename"
    )
    meta = meta.loc[labels["filename"]]
    y = labels[list(LABELS)].to_numpy()
    all_normal = np.tile([1, 0, 0], (len(y), 1))
    rng = np.random.default_rng(0)
    metrics = compute_metrics(y, rng.random(y.shape), all_normal, devices=meta["device"].tolist())

    # Rows of the confusion matrix count the true classes, so they must match a plain count of the CSV.
    row_sums = np.array(metrics["confusion_matrix_4class"]["matrix"]).sum(axis=1)
    expected = [
        int(((labels.wheeze == 0) & (labels.crackle == 0)).sum()),
        int(((labels.wheeze == 0) & (labels.crackle == 1)).sum()),
        int(((labels.wheeze == 1) & (labels.crackle == 0)).sum()),
        int(((labels.wheeze == 1) & (labels.crackle == 1)).sum()),
    ]
    assert row_sums.tolist() == expected
    # Predicting normal everywhere gives Sp 1 and Se 0 by definition, so the score is 0.5.
    assert metrics["icbhi_4class"] == {"sensitivity": 0.0, "specificity": 1.0, "score": 0.5}
    device_counts = {device: block["n_clips"] for device, block in metrics["per_device"].items()}
    assert device_counts == meta["device"].value_counts().to_dict()

    def score(y_true, probs, y_pred):
        return compute_metrics(y_true, probs, y_pred)["icbhi_4class"]["score"]

    interval = bootstrap_ci(y, y, all_normal, meta["patient_id"].tolist(), score, n_boot=10)
    assert interval["low"] == 0.5
    assert interval["high"] == 0.5
