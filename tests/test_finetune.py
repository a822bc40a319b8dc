"""Per-fold fine-tuning, prediction and evaluation, run end to end on a small synthetic set."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from transformers.trainer_utils import EvalPrediction

import lungsound_ssl.run_finetune as run_finetune
from lungsound_ssl.classifier import LungSoundClassifier
from lungsound_ssl.finetuning import LabelledClipDataset, positive_weights, validation_auroc
from lungsound_ssl.labels import LABELS
from lungsound_ssl.predict import load_models, predict_files
from lungsound_ssl.synthetic import SyntheticConfig, write_synthetic_dataset

FINETUNE_ARGS = [
    "--config", "configs/finetune/ast-tiny.yaml",
    "--clip_seconds", "1.0",
    "--num_train_epochs", "2",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "16",
    "--n_folds", "3",
    "--report_to", "none",
    "--logging_steps", "1",
]


def _exclusive(pred: np.ndarray) -> bool:
    normal, abnormal = pred[:, 0] == 1, (pred[:, 1] == 1) | (pred[:, 2] == 1)
    return bool(np.all(normal != abnormal))


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory, monkeypatch_module):
    """Fine-tune fold 0 once, recording which clips each step of the job saw."""
    data_dir = write_synthetic_dataset(
        tmp_path_factory.mktemp("data"), SyntheticConfig(n_patients=6, clips_per_patient=6, max_seconds=2.0)
    )
    output_dir = tmp_path_factory.mktemp("run")
    seen = {"datasets": [], "tuned_on": []}

    original_dataset_init = LabelledClipDataset.__init__

    def record_dataset(self, table, rows):
        original_dataset_init(self, table, rows)
        seen["datasets"].append([table.filenames[i] for i in rows])

    original_tune = run_finetune.tune_thresholds

    def record_tune(y_true, probs, criterion="f1"):
        seen["tuned_on"].append(len(y_true))
        return original_tune(y_true, probs, criterion)

    monkeypatch_module.setattr(LabelledClipDataset, "__init__", record_dataset)
    monkeypatch_module.setattr(run_finetune, "tune_thresholds", record_tune)

    from finetune.run import main

    main([*FINETUNE_ARGS, "--data_dir", str(data_dir), "--output_dir", str(output_dir), "--fold", "0",
          "--cache_dir", str(tmp_path_factory.mktemp("cache"))])
    return data_dir, output_dir, seen


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_fold_outputs_written(fold_run):
    _, output_dir, _ = fold_run
    fold_dir = output_dir / "fold_0"
    for name in ("config.json", "model.safetensors", "metrics.json", "predictions.csv", "thresholds.json",
                 "trainer_state.json", "fold_info.json"):
        assert (fold_dir / name).is_file(), name
    for name in ("folds.csv", "data_report.json", "run_info.json"):
        assert (output_dir / name).is_file(), name
    assert not list(fold_dir.glob("checkpoint-*"))


def test_predictions_cover_held_out_fold(fold_run):
    _, output_dir, _ = fold_run
    folds = pd.read_csv(output_dir / "folds.csv")
    predictions = pd.read_csv(output_dir / "fold_0" / "predictions.csv")
    assert sorted(predictions["filename"]) == sorted(folds.loc[folds["fold"] == 0, "filename"])
    pred = predictions[[f"pred_{x}" for x in LABELS]].to_numpy()
    assert _exclusive(pred)
    probs = predictions[[f"prob_{x}" for x in LABELS]].to_numpy()
    assert np.all((probs >= 0) & (probs <= 1))


def test_model_selection_never_sees_held_out(fold_run):
    _, output_dir, seen = fold_run
    folds = pd.read_csv(output_dir / "folds.csv")
    held_out = set(folds.loc[folds["fold"] == 0, "filename"])
    train, validation = seen["datasets"]
    assert held_out.isdisjoint(train)
    assert held_out.isdisjoint(validation)
    assert set(train).isdisjoint(validation)
    fold_info = json.loads((output_dir / "fold_0" / "fold_info.json").read_text())
    assert seen["tuned_on"] == [len(validation)]
    assert fold_info["n_inner_validation"] == len(validation)
    assert fold_info["n_held_out"] == len(held_out)


def test_metrics_match_predictions(fold_run):
    _, output_dir, _ = fold_run
    metrics = json.loads((output_dir / "fold_0" / "metrics.json").read_text())
    predictions = pd.read_csv(output_dir / "fold_0" / "predictions.csv")
    assert metrics["n_clips"] == len(predictions)
    true = predictions[[f"true_{x}" for x in LABELS]].to_numpy()
    pred = predictions[[f"pred_{x}" for x in LABELS]].to_numpy()
    for column, label in enumerate(LABELS):
        tp = int(((true[:, column] == 1) & (pred[:, column] == 1)).sum())
        assert metrics["per_label"][label]["tp"] == tp, label


def test_saved_model_config_and_reload(fold_run):
    data_dir, output_dir, _ = fold_run
    fold_dir = output_dir / "fold_0"
    config = json.loads((fold_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["id2label"] == {"0": "normal", "1": "wheeze", "2": "crackle"}
    thresholds = json.loads((fold_dir / "thresholds.json").read_text())["thresholds"]
    assert config["thresholds"] == pytest.approx([thresholds[x] for x in LABELS])

    predictions = pd.read_csv(fold_dir / "predictions.csv").head(4)
    models = load_models(fold_dir)
    rows = predict_files(models, [data_dir / "train" / name for name in predictions["filename"]])
    for row, (_, expected) in zip(rows, predictions.iterrows()):
        for label in LABELS:
            assert row[f"prob_{label}"] == pytest.approx(expected[f"prob_{label}"], abs=1e-5)


def test_predict_folder_with_corrupt_file(fold_run, tmp_path):
    data_dir, output_dir, _ = fold_run
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("clip_0001.wav", "clip_0002.wav"):
        (folder / name).write_bytes((data_dir / "train" / name).read_bytes())
    (folder / "corrupt.wav").write_bytes(b"RIFF0000WAVEnot really audio")

    from lungsound_ssl.predict import main

    main(["--model", str(output_dir), str(folder), "--output", str(tmp_path / "out.csv")])
    table = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert len(table) == 3
    corrupt = table[table["filename"].str.endswith("corrupt.wav")].iloc[0]
    assert "cannot decode" in corrupt["error"]
    good = table[table["error"] == ""]
    assert len(good) == 2
    assert _exclusive(good[[f"pred_{x}" for x in LABELS]].to_numpy().astype(int))


def test_evaluate_other_folder(fold_run, tmp_path):
    _, output_dir, _ = fold_run
    other = write_synthetic_dataset(tmp_path / "other", SyntheticConfig(n_patients=3, clips_per_patient=4, seed=7))
    from lungsound_ssl.evaluate import main

    main(["--model", str(output_dir), "--data_dir", str(other), "--output_dir", str(tmp_path / "eval"),
          "--cache_dir", str(tmp_path / "cache")])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert metrics["n_clips"] == 12
    assert len(predictions) == 12
    assert (tmp_path / "eval" / "data_report.json").is_file()


def test_positive_weights_hand_computed():
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]])
    # normal 2 of 4 -> 2/2 = 1; wheeze 1 of 4 -> 3/1 = 3; crackle 2 of 4 -> 1.
    assert positive_weights(labels, max_weight=10) == [1.0, 3.0, 1.0]
    assert positive_weights(labels, max_weight=2) == [1.0, 2.0, 1.0]
    assert positive_weights(np.array([[1, 0, 0]]), max_weight=5)[1:] == [5.0, 5.0]


def test_validation_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(40, 3))
    logits = rng.normal(size=(40, 3)) + labels
    scores = validation_auroc(EvalPrediction(predictions=logits, label_ids=labels))
    expected = [roc_auc_score(labels[:, i], logits[:, i]) for i in range(3)]
    assert scores["macro_auroc"] == pytest.approx(np.mean(expected))
    assert scores["auroc_wheeze"] == pytest.approx(expected[1])


def test_classifier_round_trip(tmp_path):
    import torch

    from lungsound_ssl.encoders import build_encoder, load_encoder_config

    encoder = build_encoder(load_encoder_config("ast-tiny", clip_seconds=1.0)).eval()
    model = LungSoundClassifier.from_encoder(encoder, pos_weight=[1.0, 2.0, 3.0]).eval()
    waves = torch.randn(2, 16000)
    with torch.no_grad():
        expected = model(waves).logits
    model.save_pretrained(tmp_path)
    reloaded = LungSoundClassifier.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(waves).logits, expected)
    assert reloaded.config.pos_weight == [1.0, 2.0, 3.0]
