"""Summarise a cross-validated fine-tuning run across its folds.

Reads OUTPUT_DIR/fold_*/metrics.json and predictions.csv, plus the Trainer's
log history when present, and writes OUTPUT_DIR/cv_results.json and PNG
figures under OUTPUT_DIR/figures/.

cv_results.json contains:
    per_fold: {fold name: {dotted metric key: value}} from each metrics.json.
    mean, std, count: per dotted key over the folds that define it. std is the
        sample standard deviation (ddof=1) and None with one fold.
    pooled: metrics of all out-of-fold predictions together, and a 95%
        bootstrap interval of the headline metrics that resamples groups
        (patients) when predictions.csv has a group column, else clips.
    figures: paths of the written figures, relative to OUTPUT_DIR.

Pooled predictions mix models and thresholds from different folds. Pooled
AUROC and the pooled curves therefore assume that the folds' probabilities are
comparably calibrated; the per-fold mean and std do not.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from lungsound_ssl import __version__
from lungsound_ssl.labels import CLASSES_4, LABELS
from lungsound_ssl.metrics import HEADLINE_METRICS, bootstrap_ci, compute_metrics, flatten_metrics
from lungsound_ssl.predictions_io import FoldPredictions, read_predictions

logger = logging.getLogger(__name__)

CV_RESULTS_FILE = "cv_results.json"
FIGURES_DIR = "figures"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
STD_DDOF = 1

_FOLD_DIR_PATTERN = re.compile(r"^fold_(\d+)$")


def find_fold_dirs(output_dir: str | Path) -> list[Path]:
    """Return OUTPUT_DIR/fold_<k> folders sorted by k.

    Raises:
        FileNotFoundError: if the folder does not exist or contains no fold folder.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output directory not found: {output_dir}")
    folds = []
    for path in output_dir.iterdir():
        match = _FOLD_DIR_PATTERN.match(path.name)
        if match and path.is_dir():
            folds.append((int(match.group(1)), path))
    if not folds:
        raise FileNotFoundError(
            f"no fold_<k> folders in {output_dir}; run finetune/run.py with --output_dir {output_dir} first"
        )
    return [path for _, path in sorted(folds)]


def _load_fold_metrics(fold_dir: Path, predictions: FoldPredictions) -> dict:
    path = fold_dir / METRICS_FILE
    if not path.is_file():
        logger.warning("%s not found; computing the fold's metrics from %s", path, PREDICTIONS_FILE)
        return compute_metrics(
            predictions.y_true, predictions.probs, predictions.y_pred, predictions.devices
        )
    metrics = json.loads(path.read_text())
    if not isinstance(metrics, dict) or "per_label" not in metrics:
        raise ValueError(
            f"{path} has no 'per_label' entry; metrics.json must contain the output of "
            "lungsound_ssl.metrics.compute_metrics at its top level"
        )
    if metrics.get("n_clips") != len(predictions):
        logger.warning(
            "%s reports %s clips but %s has %d rows",
            path,
            metrics.get("n_clips"),
            fold_dir / PREDICTIONS_FILE,
            len(predictions),
        )
    return metrics


def aggregate_folds(per_fold: Mapping[str, Mapping[str, float]]) -> dict[str, dict]:
    """Compute mean, std (ddof=1) and count per dotted key over the folds that define it."""
    keys = sorted({key for flat in per_fold.values() for key in flat})
    mean, std, count = {}, {}, {}
    for key in keys:
        values = np.array([flat[key] for flat in per_fold.values() if key in flat], dtype=float)
        mean[key] = float(np.mean(values))
        std[key] = float(np.std(values, ddof=STD_DDOF)) if len(values) > STD_DDOF else None
        count[key] = len(values)
    return {"mean": mean, "std": std, "count": count}


def _pool_predictions(folds: Sequence[FoldPredictions]) -> FoldPredictions:
    def stack(name: str) -> np.ndarray | None:
        parts = [getattr(fold, name) for fold in folds]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    return FoldPredictions(
        filenames=np.concatenate([f.filenames for f in folds]),
        y_true=np.concatenate([f.y_true for f in folds]),
        probs=np.concatenate([f.probs for f in folds]),
        y_pred=np.concatenate([f.y_pred for f in folds]),
        groups=stack("groups"),
        devices=stack("devices"),
    )


def _headline_metrics(
    y_true: np.ndarray, probs: np.ndarray, y_pred: np.ndarray
) -> dict[str, float]:
    flat = flatten_metrics(compute_metrics(y_true, probs, y_pred))
    return {key: flat[key] for key in HEADLINE_METRICS if key in flat}


def _pooled_results(pooled: FoldPredictions, n_boot: int, seed: int) -> dict:
    metrics = compute_metrics(pooled.y_true, pooled.probs, pooled.y_pred, pooled.devices)
    if pooled.groups is not None and all(g != "" for g in pooled.groups):
        groups, unit = pooled.groups, "group"
    else:
        logger.warning(
            "predictions.csv has no complete group column; the bootstrap resamples single clips, "
            "which gives too narrow intervals when a patient has several clips"
        )
        groups, unit = pooled.filenames, "clip"
    if len(set(pooled.filenames)) < len(pooled.filenames):
        logger.warning(
            "some clips appear in more than one fold's predictions; pooled metrics count them twice"
        )

    bootstrap = {
        "n_boot": n_boot,
        "seed": seed,
        "resampled_unit": unit,
        "n_units": len(set(groups)),
    }
    intervals: dict[str, dict] = {}
    if n_boot > 0:
        logger.info(
            "bootstrapping %d headline metrics with %d draws over %d %ss",
            len(HEADLINE_METRICS),
            n_boot,
            bootstrap["n_units"],
            unit,
        )
        drawn = bootstrap_ci(
            pooled.y_true, pooled.probs, pooled.y_pred, groups, _headline_metrics, n_boot, seed
        )
        empty = {"mean": None, "low": None, "high": None, "n_valid": 0}
        intervals = {key: drawn.get(key, empty) for key in HEADLINE_METRICS}
    return {"metrics": metrics, "bootstrap_95ci": intervals, "bootstrap": bootstrap}


def _new_figure(width_in: float = 5.0, height_in: float = 4.5) -> Figure:
    figure = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(figure)  # render with Agg whatever the user's default backend is
    return figure


def _save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _curve_points(
    kind: str, y: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str]:
    if kind == "roc":
        fpr, tpr, _ = roc_curve(y, scores)
        return fpr, tpr, f"AUROC {roc_auc_score(y, scores):.3f}"
    precision, recall, _ = precision_recall_curve(y, scores)
    return recall, precision, f"AP {average_precision_score(y, scores):.3f}"


def _plot_curves(
    folds: Mapping[str, FoldPredictions], pooled: FoldPredictions, figures_dir: Path
) -> list[Path]:
    # Plotted from sklearn's curve functions, not its Display classes, whose
    # styling arguments changed between scikit-learn releases.
    axis_names = {
        "roc": ("false positive rate", "true positive rate"),
        "pr": ("recall", "precision"),
    }
    written = []
    for j, label in enumerate(LABELS):
        if len(np.unique(pooled.y_true[:, j])) < 2:
            logger.warning(
                "no ROC or precision-recall figure for %s: the pooled clips contain one class only",
                label,
            )
            continue
        for kind in ("roc", "pr"):
            figure = _new_figure()
            ax = figure.add_subplot()
            for name, fold in folds.items():
                if len(np.unique(fold.y_true[:, j])) < 2:
                    continue
                x, y, summary = _curve_points(kind, fold.y_true[:, j], fold.probs[:, j])
                ax.plot(x, y, linewidth=0.8, alpha=0.6, label=f"{name} ({summary})")
            x, y, summary = _curve_points(kind, pooled.y_true[:, j], pooled.probs[:, j])
            ax.plot(x, y, linewidth=2.2, color="black", label=f"pooled out-of-fold ({summary})")
            ax.set_xlabel(axis_names[kind][0])
            ax.set_ylabel(axis_names[kind][1])
            ax.set_xlim(0.0, 1.0)
            ax.set_ylim(0.0, 1.02)
            ax.set_title(f"{label}: {'ROC' if kind == 'roc' else 'precision-recall'}")
            ax.legend(fontsize="x-small", loc="lower right" if kind == "roc" else "lower left")
            path = figures_dir / f"{kind}_{label}.png"
            _save(figure, path)
            written.append(path)
    return written


def _plot_confusion_matrix(matrix: Sequence[Sequence[int]], figures_dir: Path) -> Path:
    figure = _new_figure()
    ax = figure.add_subplot()
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(CLASSES_4)).plot(
        ax=ax, values_format="d", colorbar=True
    )
    ax.set_title("pooled out-of-fold, ICBHI classes")
    path = figures_dir / "confusion_matrix.png"
    _save(figure, path)
    return path


def read_log_history(fold_dir: str | Path) -> list[dict] | None:
    """Return the Trainer's ``log_history`` of a fold, or None when none is saved.

    Looks for fold_dir/trainer_state.json, then fold_dir/log_history.json (a
    bare list), then trainer_state.json of the checkpoint with the highest step.
    """
    fold_dir = Path(fold_dir)
    candidates = [fold_dir / "trainer_state.json", fold_dir / "log_history.json"]
    checkpoints = sorted(
        (p for p in fold_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    if checkpoints:
        candidates.append(checkpoints[-1] / "trainer_state.json")
    for path in candidates:
        if path.is_file():
            content = json.loads(path.read_text())
            history = content.get("log_history") if isinstance(content, dict) else content
            if isinstance(history, list):
                return history
            logger.warning("%s has no log_history list; skipping it", path)
    return None


def _plot_training_curves(histories: Mapping[str, list[dict]], figures_dir: Path) -> Path | None:
    if not histories:
        logger.info(
            "no trainer_state.json or log_history.json in any fold; no training curves figure"
        )
        return None
    figure = _new_figure(width_in=9.0, height_in=4.0)
    train_ax, eval_ax = figure.subplots(1, 2)
    for name, history in histories.items():
        for ax, key in ((train_ax, "loss"), (eval_ax, "eval_loss")):
            points = [
                (entry["step"], entry[key]) for entry in history if key in entry and "step" in entry
            ]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=name, linewidth=1.0)
    for ax, title in ((train_ax, "training loss"), (eval_ax, "validation loss")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if ax.get_lines():
            ax.legend(fontsize="x-small")
    path = figures_dir / "training_curves.png"
    _save(figure, path)
    return path


def summarize_run(output_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> dict:
    """Aggregate all folds of a run, write cv_results.json and figures, and return the results.

    Args:
        output_dir: The run's OUTPUT_DIR with fold_<k>/ folders.
        n_boot: Bootstrap draws for the pooled 95% intervals; 0 skips them.
        seed: Seed of the bootstrap.

    Returns:
        The content written to OUTPUT_DIR/cv_results.json (see the module docstring).

    Raises:
        FileNotFoundError: if there is no fold folder or a fold lacks predictions.csv.
        ValueError: if a metrics.json or predictions.csv breaks its format.
    """
    output_dir = Path(output_dir)
    fold_dirs = find_fold_dirs(output_dir)

    predictions: dict[str, FoldPredictions] = {}
    per_fold: dict[str, dict[str, float]] = {}
    histories: dict[str, list[dict]] = {}
    for fold_dir in fold_dirs:
        fold = read_predictions(fold_dir / PREDICTIONS_FILE)
        predictions[fold_dir.name] = fold
        per_fold[fold_dir.name] = flatten_metrics(_load_fold_metrics(fold_dir, fold))
        history = read_log_history(fold_dir)
        if history is not None:
            histories[fold_dir.name] = history
    logger.info("read %d folds from %s: %s", len(fold_dirs), output_dir, ", ".join(predictions))

    pooled = _pool_predictions(list(predictions.values()))
    results = {
        "n_folds": len(fold_dirs),
        "folds": list(predictions),
        "labels": list(LABELS),
        "classes_4": list(CLASSES_4),
        "std_ddof": STD_DDOF,
        "package_version": __version__,
        "per_fold": per_fold,
        **aggregate_folds(per_fold),
        "pooled": _pooled_results(pooled, n_boot, seed),
    }

    figures_dir = output_dir / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures = _plot_curves(predictions, pooled, figures_dir)
    figures.append(
        _plot_confusion_matrix(
            results["pooled"]["metrics"]["confusion_matrix_4class"]["matrix"], figures_dir
        )
    )
    curves = _plot_training_curves(histories, figures_dir)
    if curves is not None:
        figures.append(curves)
    results["figures"] = [path.relative_to(output_dir).as_posix() for path in figures]

    path = output_dir / CV_RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    logger.info("wrote %s and %d figures under %s", path, len(figures), figures_dir)
    return results
