"""Measure recording-group inference on the ICBHI take-home clips against the true ids.

The group inference uses only the audio and each clip's source sample rate.
``metadata.csv`` (true patient and recording ids) is read only to score it:

- adjusted Rand index (ARI) and purity of the inferred groups against the
  true recordings and patients, group count and sizes;
- leakage rate: the share of held-out clips whose true recording (or patient)
  also has clips in the training folds, for random stratified folds, for
  stratified group folds on inferred groups, on true patient ids and on true
  recording ids;
- macro AUROC (normal, wheeze, crackle one-vs-rest) of a fixed cheap model,
  StandardScaler + LogisticRegression on the mean and standard deviation of
  64 log-mel bands, under each fold scheme;
- a sweep over distance thresholds, the evidence for the default.

Run from the repository root:

    python benchmarks/group_inference.py --output group_inference.json

It prints markdown tables and writes every number to the JSON file.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import soxr
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from transformers.audio_utils import mel_filter_bank

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from lungsound_ssl import __version__
from lungsound_ssl.config import parse_config
from lungsound_ssl.groups import (
    GroupInferenceConfig,
    cluster_signatures,
    signature_matrix,
)
from lungsound_ssl.labels import LABELS, class_4_index

logger = logging.getLogger("group_inference")

SAMPLE_RATE_HZ = 16000

# Every clip carries content up to 0.9 x 2 kHz, the usable band of its 4 kHz
# sources, so the classifier's log-mel bands stop there for all clips alike.
LOGMEL_MAX_FREQUENCY_HZ = 1800.0
LOGMEL_MIN_FREQUENCY_HZ = 50.0
LOGMEL_BANDS = 64
LOGMEL_WINDOW = 512  # 32 ms at 16 kHz
LOGMEL_HOP = 160  # 10 ms at 16 kHz

# Selection rule for the threshold sweep: the lowest recording leakage among
# groupings whose folds stay balanced, i.e. test-fold sizes differ by at most
# 25 % (max / min).
MAX_FOLD_SIZE_RATIO = 1.25


@dataclass
class BenchmarkArguments:
    """Options of the group-inference benchmark."""

    data_dir: str = field(
        default=str(REPO_ROOT.parent / "shared" / "data" / "icbhi-cycles"),
        metadata={"help": "Folder with train/, train.csv and metadata.csv (the take-home layout)."},
    )
    output: str = field(
        default="group_inference.json", metadata={"help": "JSON file to write the results to."}
    )
    n_folds: int = field(default=5, metadata={"help": "Number of cross-validation folds."})
    n_seeds: int = field(
        default=20,
        metadata={
            "help": "Fold seeds to average leakage and fold balance over (cheap: no model is fitted)."
        },
    )
    n_auroc_seeds: int = field(
        default=3,
        metadata={"help": "The first this many fold seeds also fit and score the classifier."},
    )
    sweep_thresholds_db: list[float] = field(
        default_factory=lambda: [3.0, 5.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 14.0],
        metadata={"help": "Distance thresholds in dB for the sweep table."},
    )


# -- data -----------------------------------------------------------------


def load_icbhi_cycles(data_dir: Path) -> tuple[list[np.ndarray], np.ndarray, pd.DataFrame]:
    """Decode every clip, resample it to 16 kHz and join labels with the evaluation key.

    Returns:
        ``(waveforms, source_rates_hz, table)``; ``table`` has the label columns
        and, for scoring only, ``patient_id`` and ``recording_id``.
    """
    labels_path = data_dir / "train.csv"
    metadata_path = data_dir / "metadata.csv"
    for path in (labels_path, metadata_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; pass --data_dir pointing at the icbhi-cycles folder"
            )

    labels = pd.read_csv(labels_path)
    metadata = pd.read_csv(metadata_path, usecols=["filename", "patient_id", "recording_id"])
    table = labels.merge(metadata, on="filename", how="left", validate="one_to_one")
    if table["recording_id"].isna().any():
        missing = table.loc[table["recording_id"].isna(), "filename"].head(3).tolist()
        raise ValueError(f"metadata.csv has no row for clips such as {missing}")

    waveforms, source_rates = [], []
    for filename in table["filename"]:
        samples, source_rate = sf.read(
            data_dir / "train" / filename, dtype="float32", always_2d=True
        )
        mono = samples.mean(axis=1)
        waveforms.append(soxr.resample(mono, source_rate, SAMPLE_RATE_HZ).astype(np.float32))
        source_rates.append(source_rate)
    return waveforms, np.asarray(source_rates), table


def logmel_statistics(waveforms: list[np.ndarray]) -> np.ndarray:
    """Compute the mean and standard deviation over time of 64 log-mel bands, shape (N, 128)."""
    filters = torch.from_numpy(
        mel_filter_bank(
            num_frequency_bins=LOGMEL_WINDOW // 2 + 1,
            num_mel_filters=LOGMEL_BANDS,
            min_frequency=LOGMEL_MIN_FREQUENCY_HZ,
            max_frequency=LOGMEL_MAX_FREQUENCY_HZ,
            sampling_rate=SAMPLE_RATE_HZ,
            norm="slaney",
            mel_scale="slaney",
        )
    ).float()
    window = torch.hann_window(LOGMEL_WINDOW)
    rows = []
    for waveform in waveforms:
        samples = torch.from_numpy(waveform)
        if samples.numel() < LOGMEL_WINDOW:
            samples = torch.nn.functional.pad(samples, (0, LOGMEL_WINDOW - samples.numel()))
        power = (
            torch.stft(
                samples, LOGMEL_WINDOW, LOGMEL_HOP, window=window, center=False, return_complex=True
            )
            .abs()
            .square()
        )  # (F, T)
        logmel = torch.log(filters.T @ power + 1e-10)  # (M, F) @ (F, T) -> (M, T)
        rows.append(torch.cat([logmel.mean(dim=1), logmel.std(dim=1, correction=0)]).numpy())
    return np.stack(rows)


# -- scoring --------------------------------------------------------------


def purity(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of clips whose true id is the most common true id of their inferred group."""
    frame = pd.DataFrame({"predicted": predicted, "truth": truth})
    majority = frame.groupby("predicted")["truth"].agg(lambda ids: ids.value_counts().iloc[0])
    return float(majority.sum() / len(frame))


def group_statistics(groups: np.ndarray, table: pd.DataFrame) -> dict:
    """Compare inferred groups with the true recordings and patients."""
    recordings = table["recording_id"].to_numpy()
    patients = table["patient_id"].astype(str).to_numpy()
    sizes = pd.Series(groups).value_counts()
    groups_per_recording = pd.DataFrame({"r": recordings, "g": groups}).groupby("r")["g"].nunique()
    return {
        "n_groups": len(sizes),
        "group_size_min": int(sizes.min()),
        "group_size_median": float(sizes.median()),
        "group_size_max": int(sizes.max()),
        "single_clip_groups": int((sizes == 1).sum()),
        "ari_recording": float(adjusted_rand_score(recordings, groups)),
        "purity_recording": purity(groups, recordings),
        "ari_patient": float(adjusted_rand_score(patients, groups)),
        "purity_patient": purity(groups, patients),
        "groups_per_recording_mean": float(groups_per_recording.mean()),
        "recordings_in_one_group": float((groups_per_recording == 1).mean()),
    }


def fold_splits(
    scheme: str, groups: np.ndarray | None, strata: np.ndarray, n_folds: int, seed: int
):
    """Return the (train, test) index arrays of one fold scheme and seed, fold by fold."""
    placeholder = np.zeros((len(strata), 1))
    if scheme == "random":
        return StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(placeholder, strata)
    return StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(
        placeholder, strata, groups
    )


def evaluate_scheme(
    scheme: str,
    groups: np.ndarray | None,
    table: pd.DataFrame,
    features: np.ndarray,
    args: BenchmarkArguments,
    with_auroc: bool = True,
) -> dict:
    """Measure leakage, fold balance and macro AUROC of one fold scheme, averaged over seeds and folds."""
    strata = np.array([class_4_index(w, c) for w, c in zip(table["wheeze"], table["crackle"])])
    recordings = table["recording_id"].to_numpy()
    patients = table["patient_id"].to_numpy()
    targets = table[list(LABELS)].to_numpy()

    recording_leak, patient_leak, size_ratio, aurocs, min_positives = [], [], [], [], []
    skipped_aurocs = 0
    for seed in range(args.n_seeds):
        test_sizes = []
        for train, test in fold_splits(scheme, groups, strata, args.n_folds, seed):
            recording_leak.append(np.isin(recordings[test], recordings[train]).mean())
            patient_leak.append(np.isin(patients[test], patients[train]).mean())
            test_sizes.append(len(test))
            min_positives.append(int(targets[test].sum(axis=0).min()))
            if not with_auroc or seed >= args.n_auroc_seeds:
                continue
            per_label = []
            for k in range(len(LABELS)):
                if targets[test, k].min() == targets[test, k].max():
                    skipped_aurocs += 1
                    continue
                # newton-cholesky converges in a few steps on 128 features,
                # which keeps the whole benchmark to minutes on 2 cores.
                model = make_pipeline(
                    StandardScaler(), LogisticRegression(solver="newton-cholesky", max_iter=100)
                )
                model.fit(features[train], targets[train, k])
                per_label.append(
                    roc_auc_score(targets[test, k], model.predict_proba(features[test])[:, 1])
                )
            aurocs.append(np.mean(per_label) if per_label else np.nan)
        size_ratio.append(max(test_sizes) / min(test_sizes))

    result = {
        "recording_leakage": float(np.mean(recording_leak)),
        "patient_leakage": float(np.mean(patient_leak)),
        "fold_size_ratio": float(np.mean(size_ratio)),
        "min_label_positives_in_test_fold": int(min(min_positives)),
    }
    if with_auroc:
        result["macro_auroc"] = float(np.nanmean(aurocs))
        result["macro_auroc_std_over_folds"] = float(np.nanstd(aurocs))
        result["label_folds_without_both_classes"] = skipped_aurocs
    return result


# -- report ---------------------------------------------------------------


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Format rows as a markdown table; columns are (key, header, format)."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(format(row[key], fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def machine_description() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lungsound_ssl": __version__,
    }


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The arrays here are small (one clip, or 1969 x 128 features), so on
    # 2 shared cores a second thread costs more than it saves.
    torch.set_num_threads(1)
    threadpool_limits(limits=1)
    args, config = parse_config((BenchmarkArguments, GroupInferenceConfig), argv)
    logger.info("benchmark options %s, group inference config %s", asdict(args), asdict(config))
    timings = {}

    start = time.perf_counter()
    waveforms, source_rates, table = load_icbhi_cycles(Path(args.data_dir))
    timings["load_s"] = time.perf_counter() - start
    logger.info(
        "loaded %d clips, source rates %s",
        len(waveforms),
        dict(pd.Series(source_rates).value_counts()),
    )

    start = time.perf_counter()
    signatures = signature_matrix(waveforms, SAMPLE_RATE_HZ, source_rates, config)
    timings["signatures_s"] = time.perf_counter() - start

    start = time.perf_counter()
    groups = cluster_signatures(signatures, source_rates, config)
    timings["clustering_s"] = time.perf_counter() - start

    start = time.perf_counter()
    features = logmel_statistics(waveforms)
    timings["logmel_s"] = time.perf_counter() - start

    # Default config: group quality and the four fold schemes.
    start = time.perf_counter()
    grouping = group_statistics(groups, table)
    scheme_groups = {
        "random": None,
        "inferred": groups,
        "patient": table["patient_id"].to_numpy(),
        "recording": table["recording_id"].to_numpy(),
    }
    schemes = []
    for name, scheme_ids in scheme_groups.items():
        schemes.append({"scheme": name, **evaluate_scheme(name, scheme_ids, table, features, args)})
    timings["schemes_s"] = time.perf_counter() - start

    # Threshold sweep: the evidence for the default threshold.
    start = time.perf_counter()
    sweep = []
    for threshold_db in args.sweep_thresholds_db:
        sweep_config = GroupInferenceConfig(
            **{**asdict(config), "distance_threshold_db": threshold_db}
        )
        sweep_groups = cluster_signatures(signatures, source_rates, sweep_config)
        sweep.append(
            {
                "threshold_db": threshold_db,
                **group_statistics(sweep_groups, table),
                **evaluate_scheme("inferred", sweep_groups, table, features, args),
            }
        )
    timings["sweep_s"] = time.perf_counter() - start

    balanced = [
        row
        for row in sweep
        if row["fold_size_ratio"] <= MAX_FOLD_SIZE_RATIO
        and row["group_size_max"] <= config.max_group_fraction * len(table)
    ]
    selected = (
        min(balanced, key=lambda row: row["recording_leakage"])["threshold_db"]
        if balanced
        else None
    )

    results = {
        "command": "python benchmarks/group_inference.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description(),
        "n_clips": len(table),
        "n_recordings": int(table["recording_id"].nunique()),
        "n_patients": int(table["patient_id"].nunique()),
        "benchmark_options": asdict(args),
        "group_inference_config": asdict(config),
        "grouping": grouping,
        "schemes": schemes,
        "sweep": sweep,
        "selection_rule": (
            f"lowest recording leakage among thresholds with mean test-fold size max/min <= "
            f"{MAX_FOLD_SIZE_RATIO} and largest group <= {config.max_group_fraction:.0%} of clips"
        ),
        "selected_threshold_db": selected,
        "timings_s": timings,
    }
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"## Inferred groups (threshold {config.distance_threshold_db} dB, {config.linkage} linkage)\n"
    )
    print(
        markdown_table(
            [grouping],
            [
                ("n_groups", "groups", "d"),
                ("group_size_median", "median size", ".0f"),
                ("group_size_max", "max size", "d"),
                ("single_clip_groups", "single-clip", "d"),
                ("ari_recording", "ARI rec", ".3f"),
                ("purity_recording", "purity rec", ".3f"),
                ("ari_patient", "ARI pat", ".3f"),
                ("purity_patient", "purity pat", ".3f"),
                ("groups_per_recording_mean", "groups/rec", ".2f"),
                ("recordings_in_one_group", "rec in 1 group", ".3f"),
            ],
        )
    )
    print(
        f"\n## Fold schemes ({args.n_folds} folds; leakage and balance over {args.n_seeds} fold seeds, "
        f"AUROC over {args.n_auroc_seeds})\n"
    )
    print(
        markdown_table(
            schemes,
            [
                ("scheme", "folds grouped by", "s"),
                ("recording_leakage", "leakage rec", ".3f"),
                ("patient_leakage", "leakage pat", ".3f"),
                ("fold_size_ratio", "fold size max/min", ".2f"),
                ("macro_auroc", "macro AUROC", ".3f"),
                ("macro_auroc_std_over_folds", "AUROC std", ".3f"),
            ],
        )
    )
    print("\n## Threshold sweep (inferred-group folds)\n")
    print(
        markdown_table(
            sweep,
            [
                ("threshold_db", "threshold dB", ".1f"),
                ("n_groups", "groups", "d"),
                ("group_size_max", "max size", "d"),
                ("ari_recording", "ARI rec", ".3f"),
                ("purity_recording", "purity rec", ".3f"),
                ("ari_patient", "ARI pat", ".3f"),
                ("purity_patient", "purity pat", ".3f"),
                ("recording_leakage", "leakage rec", ".3f"),
                ("patient_leakage", "leakage pat", ".3f"),
                ("fold_size_ratio", "fold size max/min", ".2f"),
                ("macro_auroc", "macro AUROC", ".3f"),
            ],
        )
    )
    print(f"\nSelected by rule ({results['selection_rule']}): {selected} dB")
    print("\nTimings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    return results


if __name__ == "__main__":
    main()
