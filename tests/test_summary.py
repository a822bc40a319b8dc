"""Tests for the cross-validation summary, the model card and predictions.csv I/O."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import huggingface_hub
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from huggingface_hub import ModelCard

from lungsound_ssl.labels import LABELS
from lungsound_ssl.metrics import HEADLINE_METRICS, compute_metrics, flatten_metrics
from lungsound_ssl.model_card import (
    UPLOAD_IGNORE_PATTERNS,
    format_number,
    push_to_hub,
    write_model_card,
)
from lungsound_ssl.predictions_io import (
    PROB_COLUMNS,
    REQUIRED_COLUMNS,
    read_predictions,
    write_predictions,
)
from lungsound_ssl.summary import summarize_run

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_BOOT = 20
NORMAL, WHEEZE, CRACKLE = (LABELS.index(name) for name in ("normal", "wheeze", "crackle"))

RUN_INFO = {
    "data_dir": "/data/icbhi-cycles",
    "data_format": "takehome",
    "data_report": {
        "n_listed": 420,
        "n_trainable": 396,
        "label_counts": {"normal": 180, "wheeze_only": 80, "crackle_only": 90, "both": 46},
        "exclusion_counts": {"digital silence": 7, "label conflict": 17},
    },
    "split_strategy": "StratifiedGroupKFold grouped by patient_id",
    "group_source": "patient_id",
    "n_folds": 3,
    "encoder_type": "ast",
    "base_model": "MIT/ast-finetuned-audioset-10-10-0.4593",
    "pretrain_saw_heldout": False,
    "command": "python finetune/run.py --config configs/finetune/ast.yaml",
}


def _fold_arrays(rng: np.random.Generator, n_clips: int):
    wheeze = rng.random(n_clips) < 0.3
    crackle = rng.random(n_clips) < 0.35
    y = np.stack([~(wheeze | crackle), wheeze, crackle], axis=1).astype(int)
    probs = np.clip(0.35 * y + 0.65 * rng.random((n_clips, 3)), 0.0, 1.0)
    pred = np.zeros_like(y)
    pred[:, WHEEZE] = probs[:, WHEEZE] >= 0.5
    pred[:, CRACKLE] = probs[:, CRACKLE] >= 0.45
    pred[:, NORMAL] = (pred[:, WHEEZE] == 0) & (pred[:, CRACKLE] == 0)
    return y, probs, pred


def _write_run(output_dir: Path, n_folds: int = 3, seed: int = 0, with_logs: bool = True) -> dict:
    """Write fold_<k>/ folders as a fine-tuning run would; return the arrays per fold."""
    rng = np.random.default_rng(seed)
    folds = {}
    for k in range(n_folds):
        n_clips = 60 + 10 * k
        y, probs, pred = _fold_arrays(rng, n_clips)
        filenames = [f"{k}_{i:03d}.wav" for i in range(n_clips)]
        groups = [f"patient_{k}_{i // 4:02d}" for i in range(n_clips)]
        devices = ["Meditron" if i % 3 else "LittC2SE" for i in range(n_clips)]
        fold_dir = output_dir / f"fold_{k}"
        write_predictions(fold_dir / "predictions.csv", filenames, y, probs, pred, groups, devices)
        (fold_dir / "metrics.json").write_text(json.dumps(compute_metrics(y, probs, pred, devices)))
        if with_logs:
            history = [{"loss": 1.0 / (s + 1), "step": 5 * s, "epoch": s / 4} for s in range(8)]
            history += [
                {"eval_loss": 1.1 / (s + 1), "step": 5 * s, "epoch": s / 4} for s in range(0, 8, 2)
            ]
            (fold_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        folds[fold_dir.name] = (y, probs, pred, devices)
    return folds


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    folds = _write_run(output_dir)
    cv_results = summarize_run(output_dir, n_boot=N_BOOT)
    card_path = write_model_card(output_dir, cv_results, RUN_INFO)
    return output_dir, folds, cv_results, card_path


def _front_matter(card_path: Path) -> dict:
    text = card_path.read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.DOTALL)
    assert match is not None, "model card has no YAML front matter"
    return yaml.safe_load(match.group(1))


# predictions.csv


def test_predictions_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    y, probs, pred = _fold_arrays(rng, 12)
    filenames = [f"{i:04d}" for i in range(12)]
    path = write_predictions(
        tmp_path / "predictions.csv", filenames, y, probs, pred, groups=["007"] * 12
    )
    fold = read_predictions(path)
    assert fold.filenames.tolist() == filenames
    assert fold.groups.tolist() == ["007"] * 12
    assert fold.devices is None
    assert np.array_equal(fold.y_true, y)
    assert np.array_equal(fold.y_pred, pred)
    assert np.allclose(fold.probs, probs)


def test_predictions_column_order(tmp_path):
    rng = np.random.default_rng(1)
    y, probs, pred = _fold_arrays(rng, 3)
    path = write_predictions(
        tmp_path / "p.csv", ["a", "b", "c"], y, probs, pred, devices=["x", "y", "z"]
    )
    header = path.read_text().splitlines()[0].split(",")
    assert header == [*REQUIRED_COLUMNS, "device"]


def test_predictions_missing_column(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("filename,true_normal\na.wav,1\n")
    with pytest.raises(ValueError, match=PROB_COLUMNS[0]):
        read_predictions(path)


def test_predictions_invalid_label(tmp_path):
    rng = np.random.default_rng(2)
    y, probs, pred = _fold_arrays(rng, 4)
    path = write_predictions(tmp_path / "predictions.csv", list("abcd"), y, probs, pred)
    table = pd.read_csv(path)
    table.loc[1, "true_wheeze"] = 2
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match="only 0 and 1"):
        read_predictions(path)


# cv_results.json


def test_summary_mean_std_match_numpy(run_dir):
    output_dir, folds, cv_results, _ = run_dir
    per_fold = [
        flatten_metrics(json.loads((output_dir / name / "metrics.json").read_text()))
        for name in folds
    ]
    for key in (
        "icbhi_4class.score",
        "macro_f1",
        "per_label.wheeze.auroc",
        "per_label.crackle.specificity",
    ):
        values = np.array([flat[key] for flat in per_fold])
        assert cv_results["mean"][key] == pytest.approx(np.mean(values)), key
        assert cv_results["std"][key] == pytest.approx(np.std(values, ddof=1)), key
        assert cv_results["count"][key] == 3, key


def test_summary_per_fold_values(run_dir):
    _, folds, cv_results, _ = run_dir
    y, probs, pred, _ = folds["fold_1"]
    expected = compute_metrics(y, probs, pred)["icbhi_4class"]["score"]
    assert cv_results["per_fold"]["fold_1"]["icbhi_4class.score"] == pytest.approx(expected)
    assert cv_results["folds"] == ["fold_0", "fold_1", "fold_2"]


def test_summary_pooled_metrics(run_dir):
    _, folds, cv_results, _ = run_dir
    arrays = list(folds.values())
    y = np.concatenate([a[0] for a in arrays])
    probs = np.concatenate([a[1] for a in arrays])
    pred = np.concatenate([a[2] for a in arrays])
    devices = [d for a in arrays for d in a[3]]
    expected = json.loads(json.dumps(compute_metrics(y, probs, pred, devices)))
    pooled = cv_results["pooled"]["metrics"]
    assert pooled["n_clips"] == 60 + 70 + 80
    assert flatten_metrics(pooled) == pytest.approx(flatten_metrics(expected))


def test_summary_bootstrap_over_groups(run_dir):
    _, _, cv_results, _ = run_dir
    bootstrap = cv_results["pooled"]["bootstrap"]
    intervals = cv_results["pooled"]["bootstrap_95ci"]
    pooled_score = cv_results["pooled"]["metrics"]["icbhi_4class"]["score"]
    assert bootstrap["resampled_unit"] == "group"
    assert bootstrap["n_units"] == 15 + 18 + 20
    assert sorted(intervals) == sorted(HEADLINE_METRICS)
    assert (
        intervals["icbhi_4class.score"]["low"]
        <= pooled_score
        <= intervals["icbhi_4class.score"]["high"]
    )
    assert intervals["icbhi_4class.score"]["n_valid"] == N_BOOT


def test_summary_json_written(run_dir):
    output_dir, _, cv_results, _ = run_dir
    on_disk = json.loads((output_dir / "cv_results.json").read_text())
    assert on_disk == json.loads(json.dumps(cv_results))


def test_summary_figures_are_png(run_dir):
    output_dir, _, cv_results, _ = run_dir
    expected = [f"figures/{kind}_{label}.png" for label in LABELS for kind in ("roc", "pr")]
    expected += ["figures/confusion_matrix.png", "figures/training_curves.png"]
    assert sorted(cv_results["figures"]) == sorted(expected)
    for relative in expected:
        path = output_dir / relative
        assert path.read_bytes()[:8] == PNG_SIGNATURE, relative
        height, width = matplotlib.image.imread(path).shape[:2]
        assert height > 100, relative
        assert width > 100, relative


def test_summary_single_fold_std(tmp_path):
    _write_run(tmp_path, n_folds=1, with_logs=False)
    cv_results = summarize_run(tmp_path, n_boot=0)
    assert cv_results["std"]["icbhi_4class.score"] is None
    assert cv_results["pooled"]["bootstrap_95ci"] == {}
    assert "figures/training_curves.png" not in cv_results["figures"]


def test_summary_without_metrics_json(tmp_path):
    folds = _write_run(tmp_path, n_folds=2, with_logs=False)
    (tmp_path / "fold_0" / "metrics.json").unlink()
    cv_results = summarize_run(tmp_path, n_boot=0)
    y, probs, pred, _ = folds["fold_0"]
    expected = compute_metrics(y, probs, pred)["macro_f1"]
    assert cv_results["per_fold"]["fold_0"]["macro_f1"] == pytest.approx(expected)


def test_summary_without_groups_resamples_clips(tmp_path):
    rng = np.random.default_rng(5)
    for k in range(2):
        y, probs, pred = _fold_arrays(rng, 40)
        write_predictions(
            tmp_path / f"fold_{k}" / "predictions.csv",
            [f"{k}_{i}" for i in range(40)],
            y,
            probs,
            pred,
        )
    cv_results = summarize_run(tmp_path, n_boot=5)
    assert cv_results["pooled"]["bootstrap"]["resampled_unit"] == "clip"
    assert "per_device" not in cv_results["pooled"]["metrics"]


def test_summary_no_folds(tmp_path):
    with pytest.raises(FileNotFoundError, match="fold_"):
        summarize_run(tmp_path)


def test_summary_metrics_json_wrong_format(tmp_path):
    _write_run(tmp_path, n_folds=1, with_logs=False)
    (tmp_path / "fold_0" / "metrics.json").write_text('{"test": {"macro_f1": 0.5}}')
    with pytest.raises(ValueError, match="per_label"):
        summarize_run(tmp_path, n_boot=0)


# README.md model card


def test_card_front_matter(run_dir):
    _, _, _, card_path = run_dir
    meta = _front_matter(card_path)
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "audio-classification"
    assert meta["base_model"] == RUN_INFO["base_model"]
    assert {"audio-classification", "lung-sounds", "respiratory", "self-supervised"} <= set(
        meta["tags"]
    )
    assert meta["datasets"] == ["takehome"]


def test_card_index_equals_cv_results(run_dir):
    _, _, cv_results, card_path = run_dir
    card = ModelCard.load(card_path)
    results = card.data.eval_results
    assert len(results) == len(HEADLINE_METRICS)
    for result, key in zip(results, HEADLINE_METRICS):
        assert result.metric_value == cv_results["mean"][key], key
        std_text = re.search(r"std (\d+\.\d+)", result.metric_name).group(1)
        assert float(std_text) == round(cv_results["std"][key], 4), key


def test_card_tables_equal_cv_results(run_dir):
    _, _, cv_results, card_path = run_dir
    text = card_path.read_text()
    row = re.search(
        r"^\| ICBHI score \(4 classes\) \| (\S+) ± (\S+) \| (\S+) \| (\S+) to (\S+) \|$",
        text,
        re.MULTILINE,
    )
    interval = cv_results["pooled"]["bootstrap_95ci"]["icbhi_4class.score"]
    assert row.group(1) == format_number(cv_results["mean"]["icbhi_4class.score"])
    assert row.group(2) == format_number(cv_results["std"]["icbhi_4class.score"])
    assert row.group(3) == format_number(cv_results["pooled"]["metrics"]["icbhi_4class"]["score"])
    assert row.group(4) == format_number(interval["low"])
    assert row.group(5) == format_number(interval["high"])

    wheeze = re.search(r"^\| wheeze \| (.+) \|$", text, re.MULTILINE).group(1).split(" | ")
    for cell, name in zip(
        wheeze, ("auroc", "average_precision", "f1", "sensitivity", "specificity")
    ):
        key = f"per_label.wheeze.{name}"
        assert (
            cell
            == f"{format_number(cv_results['mean'][key])} ± {format_number(cv_results['std'][key])}"
        ), key

    matrix = cv_results["pooled"]["metrics"]["confusion_matrix_4class"]["matrix"]
    both_row = re.search(r"^\| both \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", text, re.MULTILINE)
    assert [int(v) for v in both_row.groups()] == matrix[3]


def test_card_sections(run_dir):
    _, _, _, card_path = run_dir
    text = card_path.read_text()
    assert "not a medical device" in text
    assert "| label conflict | 17 |" in text
    assert "Patient ids known and used: Yes" in text
    assert "Held-out audio seen during pretraining: no" in text
    assert RUN_INFO["command"] in text
    assert "![confusion matrix](figures/confusion_matrix.png)" in text


def test_card_unknown_run_info(run_dir, tmp_path):
    _, _, cv_results, _ = run_dir
    card_path = write_model_card(tmp_path, cv_results, {})
    text = card_path.read_text()
    assert "- Data folder: `unknown`" in text
    assert "Held-out audio seen during pretraining: unknown" in text
    assert "base_model" not in _front_matter(card_path)


def test_card_local_base_model_not_in_metadata(run_dir, tmp_path):
    _, _, cv_results, _ = run_dir
    run_info = {"base_model": str(tmp_path), "encoder_type": f"from {tmp_path}"}
    meta = _front_matter(write_model_card(tmp_path, cv_results, run_info))
    assert "base_model" not in meta
    assert not any(str(tmp_path) in tag for tag in meta["tags"])


# finetune/summarize.py and upload


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "summarize_cli", REPO_ROOT / "finetune" / "summarize.py"
    )
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules, so register before running.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cli_writes_outputs(tmp_path, monkeypatch):
    _write_run(tmp_path, n_folds=2)
    (tmp_path / "run_info.json").write_text(json.dumps(RUN_INFO))

    def no_upload(*args, **kwargs):
        raise AssertionError("nothing may be uploaded without --push_to_hub")

    monkeypatch.setattr(huggingface_hub, "upload_folder", no_upload)
    cv_results = _load_cli().main(["--output_dir", str(tmp_path), "--n_boot", "3"])
    assert (tmp_path / "cv_results.json").is_file()
    assert RUN_INFO["command"] in (tmp_path / "README.md").read_text()
    assert cv_results["n_folds"] == 2


def test_cli_push_needs_model_id(tmp_path):
    with pytest.raises(ValueError, match="hub_model_id"):
        _load_cli().main(["--output_dir", str(tmp_path), "--push_to_hub"])


def test_push_to_hub_arguments(run_dir, monkeypatch):
    output_dir, _, _, _ = run_dir
    calls = {}

    class Commit:
        commit_url = "https://huggingface.co/user/lungs/commit/abc"

    monkeypatch.setattr(
        huggingface_hub,
        "create_repo",
        lambda repo_id, **kwargs: calls.update(repo=repo_id, **kwargs),
    )
    monkeypatch.setattr(
        huggingface_hub, "upload_folder", lambda **kwargs: calls.update(upload=kwargs) or Commit()
    )
    url = push_to_hub(output_dir, "user/lungs", token="hf_test")
    assert url == Commit.commit_url
    assert calls["repo"] == "user/lungs"
    assert calls["exist_ok"] is True
    assert calls["upload"]["folder_path"] == output_dir
    assert calls["upload"]["token"] == "hf_test"
    assert calls["upload"]["ignore_patterns"] == list(UPLOAD_IGNORE_PATTERNS)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().main(["--help"])
    assert exit_info.value.code == 0
    assert "--n_boot" in capsys.readouterr().out
