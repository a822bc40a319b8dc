"""Write a run's README.md as a Hugging Face model card, and upload a run on request.

The card has YAML metadata (license, tags, base model, datasets and a
model-index whose values are the mean over folds, with the standard deviation
in each result's name) and sections on use and limits, data, evaluation
protocol, pretraining, results, figures, loading and reproduction. Every metric
in it is read from cv_results (the output of ``lungsound_ssl.summary``), and
data counts are read from run_info's data_report. Nothing is uploaded unless
``push_to_hub`` is called.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from lungsound_ssl.decoding import THRESHOLDS_FILE
from lungsound_ssl.labels import CLASSES_4, LABELS
from lungsound_ssl.metrics import HEADLINE_METRICS, flatten_metrics

logger = logging.getLogger(__name__)

MODEL_CARD_FILE = "README.md"
UNKNOWN = "unknown"
BASE_TAGS = (
    "audio-classification",
    "lung-sounds",
    "respiratory",
    "self-supervised",
    "contrastive-learning",
    "multi-label-classification",
)
# Intermediate Trainer checkpoints contain optimizer state and are not needed to use the model.
UPLOAD_IGNORE_PATTERNS = ("checkpoint-*/*", "*/checkpoint-*/*")

_SUMMARY_KEYS = HEADLINE_METRICS[:8]
_PER_LABEL_METRICS = ("auroc", "average_precision", "f1", "sensitivity", "specificity")
_METRIC_NAMES = {
    "score": "score",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "auroc": "AUROC",
    "average_precision": "average precision",
    "f1": "F1",
}
_METRIC_TYPES = {"auroc": "roc_auc", "average_precision": "average_precision", "f1": "f1"}

_GROUP_SOURCE_TEXT = {
    "patient_id": "Yes. Folds are grouped by patient id, so no patient has clips in both the training and "
    "the held-out part of a fold.",
    "recording_id": "No. Folds are grouped by recording id. A patient with several recordings can have "
    "clips on both sides of a fold, so scores may be optimistic.",
    "inferred": "No. Folds are grouped by recording groups inferred from the audio, which approximates "
    "grouping by recording. Scores may be optimistic if one patient appears in several groups.",
    "none": "No. Folds are split clip by clip, so clips of one recording can be on both sides of a fold "
    "and scores are likely optimistic.",
    "official_split": "The ICBHI 2017 official train/test split is used; it separates patients.",
}


def display_name(key: str) -> str:
    """Turn a dotted metric key such as ``per_label.wheeze.auroc`` into a table label."""
    parts = key.split(".")
    if parts[0] == "per_label":
        return f"{parts[1]} {_METRIC_NAMES.get(parts[2], parts[2])}"
    if parts[0] == "icbhi_4class":
        return f"ICBHI {_METRIC_NAMES[parts[1]]} (4 classes)"
    if parts[0] == "icbhi_2class":
        return f"ICBHI {_METRIC_NAMES[parts[1]]} (normal vs abnormal)"
    return {"macro_f1": "macro F1", "macro_auroc": "macro AUROC"}.get(key, key)


def _metric_type(key: str) -> str:
    parts = key.split(".")
    if parts[0] in ("icbhi_4class", "icbhi_2class"):
        return f"{parts[0]}_{parts[1]}"
    if parts[0] == "per_label":
        return _METRIC_TYPES.get(parts[2], parts[2])
    return key


def format_number(value: float | None, digits: int = 3) -> str:
    """Format a metric for the card's tables. None becomes ``n/a``."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_mean_std(cv_results: Mapping, key: str) -> str:
    """Format ``mean ± std`` over folds of a dotted key, or ``n/a`` when no fold defines it."""
    mean = cv_results["mean"].get(key)
    std = cv_results["std"].get(key)
    if mean is None:
        return "n/a"
    if std is None:
        return format_number(mean)
    return f"{format_number(mean)} ± {format_number(std)}"


def _format_interval(interval: Mapping | None) -> str:
    if not interval or interval.get("low") is None:
        return "n/a"
    return f"{format_number(interval['low'])} to {format_number(interval['high'])}"


def _text(run_info: Mapping, key: str) -> str:
    value = run_info.get(key)
    return UNKNOWN if value is None or value == "" else str(value)


def _is_hub_id(name: str) -> bool:
    # A local folder is not a valid base_model in Hub metadata, so it is named only in the text.
    return not (name.startswith(("/", ".", "~")) or Path(name).exists())


def _dataset_names(run_info: Mapping) -> list[str]:
    datasets = run_info.get("datasets")
    if isinstance(datasets, str):
        return [datasets]
    if datasets:
        return [str(d) for d in datasets]
    return [str(run_info["data_format"])] if run_info.get("data_format") else [UNKNOWN]


def build_card_data(cv_results: Mapping, run_info: Mapping) -> ModelCardData:
    """Build the YAML metadata, with one model-index result per headline metric."""
    n_folds = cv_results["n_folds"]
    datasets = _dataset_names(run_info)
    model_name = run_info.get("model_name") or "lungsound-ssl abnormal lung sound classifier"
    split = f"{n_folds}-fold cross-validation, held-out folds"

    eval_results = []
    for key in HEADLINE_METRICS:
        mean = cv_results["mean"].get(key)
        if mean is None:
            continue
        std = cv_results["std"].get(key)
        spread = f"std {std:.4f}" if std is not None else "std undefined"
        eval_results.append(
            EvalResult(
                task_type="audio-classification",
                task_name="Abnormal lung sound detection (normal, wheeze, crackle)",
                dataset_type=datasets[0],
                dataset_name=datasets[0],
                dataset_split=split,
                metric_type=_metric_type(key),
                metric_value=mean,
                metric_name=f"{display_name(key)}, mean of {n_folds} folds, {spread}",
            )
        )

    tags = list(BASE_TAGS)
    encoder_type = str(run_info.get("encoder_type") or "")
    # Only a plain name such as "ast" becomes a Hub tag. A description or a path stays in the text only.
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", encoder_type):
        tags.append(encoder_type.lower())
    base_model = run_info.get("base_model")
    return ModelCardData(
        model_name=model_name,
        license=run_info.get("license") or "apache-2.0",
        tags=tags,
        base_model=base_model if base_model and _is_hub_id(str(base_model)) else None,
        datasets=datasets,
        library_name="transformers",
        pipeline_tag="audio-classification",
        eval_results=eval_results or None,
    )


def _section_use() -> list[str]:
    return [
        "## What the model does and does not do",
        "",
        (
            "It takes a short stethoscope clip, such as one respiratory cycle, and returns a probability for each "
            f"label in the order {', '.join(LABELS)}. Wheeze and crackle may both be present; normal excludes them. "
            "Decoding sets wheeze and crackle when their probability reaches the threshold tuned for them, and "
            "normal when neither does, so each clip gets one of the ICBHI classes "
            f"{', '.join(CLASSES_4)}."
        ),
        "",
        (
            "- It is a research model and **not a medical device**. It has no regulatory clearance and must not be "
            "used to diagnose, triage or treat anyone."
        ),
        (
            "- It does not name a disease, locate a sound in time, or detect other adventitious sounds such as "
            "stridor, rhonchi or pleural rub; such clips still receive one of the four classes."
        ),
        "- It does not judge recording quality: noisy or badly placed recordings still get a label.",
        "- Its scores apply to the recordings described below. Other stethoscopes, populations and settings are untested.",
        "",
    ]


def _section_data(run_info: Mapping) -> list[str]:
    lines = [
        "## Data",
        "",
        f"- Data folder: `{_text(run_info, 'data_dir')}`",
        f"- Format: {_text(run_info, 'data_format')}",
    ]
    report = run_info.get("data_report")
    if not isinstance(report, Mapping):
        return lines + ["- Cleaning report: unknown", ""]
    for key, text in (
        ("n_listed", "clips listed"),
        ("n_decoded", "clips decoded"),
        ("n_trainable", "clips used for labelled training"),
        ("n_pretrain", "clips usable for self-supervised pretraining"),
    ):
        if key in report:
            lines.append(f"- {text}: {report[key]}")
    label_counts = report.get("label_counts")
    if isinstance(label_counts, Mapping) and label_counts:
        lines += ["", "| label | clips |", "|---|---|"]
        lines += [f"| {label} | {count} |" for label, count in label_counts.items()]
    exclusions = report.get("exclusion_counts")
    if isinstance(exclusions, Mapping):
        lines += ["", "Clips excluded from labelled training by the cleaning step:", ""]
        if exclusions:
            lines += ["| reason | clips |", "|---|---|"]
            lines += [f"| {reason} | {count} |" for reason, count in sorted(exclusions.items())]
        else:
            lines.append("none")
    return lines + [""]


def _section_protocol(cv_results: Mapping, run_info: Mapping) -> list[str]:
    group_source = run_info.get("group_source")
    patients = _GROUP_SOURCE_TEXT.get(str(group_source), UNKNOWN) if group_source else UNKNOWN
    return [
        "## Evaluation protocol",
        "",
        (
            f"- Split: {_text(run_info, 'split_strategy')}, {cv_results['n_folds']} folds "
            f"({', '.join(cv_results['folds'])}). Each fold's model is scored on clips it never saw in fine-tuning."
        ),
        f"- Groups: {_text(run_info, 'group_source')}. Patient ids known and used: {patients}",
        (
            "- Thresholds: tuned per label on an inner validation split of the training folds and saved with each "
            f"fold's model as `{THRESHOLDS_FILE}`."
        ),
        (
            "- Mean ± std are over folds (sample standard deviation). Pooled values score all held-out predictions "
            f"together; their 95% intervals come from {_bootstrap_text(cv_results)}."
        ),
        "",
    ]


def _bootstrap_text(cv_results: Mapping) -> str:
    bootstrap = cv_results["pooled"].get("bootstrap", {})
    if not bootstrap.get("n_boot"):
        return "no bootstrap (not computed)"
    unit = "patients (groups)" if bootstrap.get("resampled_unit") == "group" else "single clips"
    return f"{bootstrap['n_boot']} bootstrap draws over {bootstrap.get('n_units', UNKNOWN)} {unit}"


def _section_pretraining(run_info: Mapping) -> list[str]:
    saw = run_info.get("pretrain_saw_heldout")
    if saw is True:
        heldout = (
            "yes. The unlabelled pretraining audio included the clips later held out in fine-tuning; "
            "their labels were never used."
        )
    elif saw is False:
        heldout = "no. Held-out clips were not part of the pretraining audio."
    else:
        heldout = UNKNOWN
    return [
        "## Self-supervised pretraining",
        "",
        f"- Encoder: {_text(run_info, 'encoder_type')}, initialised from {_text(run_info, 'base_model')}",
        f"- Contrastive pretraining output: `{_text(run_info, 'pretrain_dir')}`",
        f"- Pretraining data: {_text(run_info, 'pretrain_data')}",
        f"- Held-out audio seen during pretraining: {heldout}",
        "",
    ]


def _section_results(cv_results: Mapping) -> list[str]:
    n_folds = cv_results["n_folds"]
    pooled = flatten_metrics(cv_results["pooled"]["metrics"])
    intervals = cv_results["pooled"].get("bootstrap_95ci", {})
    lines = [
        "## Results",
        "",
        f"| metric | mean ± std over {n_folds} folds | pooled out-of-fold | pooled 95% interval |",
        "|---|---|---|---|",
    ]
    for key in _SUMMARY_KEYS:
        lines.append(
            f"| {display_name(key)} | {format_mean_std(cv_results, key)} | "
            f"{format_number(pooled.get(key))} | {_format_interval(intervals.get(key))} |"
        )

    header = " | ".join(_METRIC_NAMES[name] for name in _PER_LABEL_METRICS)
    lines += [
        "",
        f"Per label, mean ± std over {n_folds} folds:",
        "",
        f"| label | {header} |",
        "|---" * (len(_PER_LABEL_METRICS) + 1) + "|",
    ]
    for label in LABELS:
        cells = " | ".join(
            format_mean_std(cv_results, f"per_label.{label}.{name}") for name in _PER_LABEL_METRICS
        )
        lines.append(f"| {label} | {cells} |")

    matrix = cv_results["pooled"]["metrics"]["confusion_matrix_4class"]
    lines += [
        "",
        "Pooled confusion matrix of the ICBHI classes (rows true, columns predicted):",
        "",
        f"| true \\ predicted | {' | '.join(matrix['labels'])} |",
        "|---" * (len(matrix["labels"]) + 1) + "|",
    ]
    for name, row in zip(matrix["labels"], matrix["matrix"]):
        lines.append(f"| {name} | {' | '.join(str(count) for count in row)} |")

    per_device = cv_results["pooled"]["metrics"].get("per_device")
    if per_device:
        lines += [
            "",
            "Pooled results per recording device:",
            "",
            "| device | clips | ICBHI score (4 classes) | macro AUROC |",
            "|---|---|---|---|",
        ]
        for device, metrics in per_device.items():
            lines.append(
                f"| {device} | {metrics['n_clips']} | {format_number(metrics['icbhi_4class']['score'])} | "
                f"{format_number(metrics['macro_auroc'])} |"
            )
    return lines + [""]


def _section_figures(cv_results: Mapping) -> list[str]:
    figures = cv_results.get("figures", [])
    if not figures:
        return []
    lines = ["## Figures", ""]
    lines += [f"![{Path(path).stem.replace('_', ' ')}]({path})" for path in figures]
    return lines + [""]


def _section_usage(run_info: Mapping) -> list[str]:
    if run_info.get("usage"):
        return ["## How to load and predict", "", str(run_info["usage"]), ""]
    hub_id = run_info.get("hub_model_id")
    if hub_id:
        load = f'source, subfolder = "{hub_id}", "fold_0"'
        thresholds = f'hf_hub_download(source, "{THRESHOLDS_FILE}", subfolder=subfolder)'
        extra_import = "from huggingface_hub import hf_hub_download\n"
    else:
        load = 'source, subfolder = "OUTPUT_DIR", "fold_0"  # OUTPUT_DIR: the run folder that contains this card'
        thresholds = f'f"{{source}}/{{subfolder}}/{THRESHOLDS_FILE}"'
        extra_import = ""
    # NOTE: the snippet assumes that each fold folder contains a save_pretrained audio-classification
    # model, its feature extractor and thresholds.json. A run with another layout should pass run_info["usage"].
    return [
        "## How to load and predict",
        "",
        (
            "Each fold folder holds a model trained without that fold. Any of them can be used; "
            "`lungsound_ssl` is this repository's package."
        ),
        "",
        "```python",
        "import soundfile as sf",
        "import soxr",
        "import torch",
        f"{extra_import}from transformers import AutoFeatureExtractor, AutoModelForAudioClassification",
        "from lungsound_ssl.decoding import decode_predictions, load_thresholds",
        "",
        load,
        "extractor = AutoFeatureExtractor.from_pretrained(source, subfolder=subfolder)",
        "model = AutoModelForAudioClassification.from_pretrained(source, subfolder=subfolder).eval()",
        "",
        'audio, rate_hz = sf.read("clip.wav", dtype="float32", always_2d=True)',
        "audio = soxr.resample(audio.mean(axis=1), rate_hz, extractor.sampling_rate)",
        'inputs = extractor(audio, sampling_rate=extractor.sampling_rate, return_tensors="pt")',
        "with torch.no_grad():",
        f"    probs = torch.sigmoid(model(**inputs).logits).numpy()  # columns: {', '.join(LABELS)}",
        f"labels = decode_predictions(probs, load_thresholds({thresholds}))",
        "```",
        "",
    ]


def _section_reproduce(cv_results: Mapping, run_info: Mapping) -> list[str]:
    command = run_info.get("command")
    lines = ["## Reproduce", ""]
    if command:
        lines += ["Training:", "", "```bash", str(command), "```"]
    else:
        lines.append("The training command was not recorded (unknown).")
    lines += [
        "",
        "Summary, figures and this card:",
        "",
        "```bash",
        "python finetune/summarize.py --output_dir OUTPUT_DIR",
        "```",
        "",
        (
            f"lungsound-ssl version of the training run: {_text(run_info, 'package_version')}; "
            f"of the summary: {cv_results.get('package_version', UNKNOWN)}."
        ),
        "",
    ]
    return lines


def build_model_card(cv_results: Mapping, run_info: Mapping) -> ModelCard:
    """Build the card text and metadata from cv_results and run_info."""
    card_data = build_card_data(cv_results, run_info)
    body = [
        f"# {card_data.model_name}",
        "",
        (
            "Multi-label detector of abnormal lung sounds (wheeze, crackle) in short stethoscope clips. A "
            "transformers audio encoder, pretrained with contrastive self-supervised learning where the "
            "pretraining section says so, was fine-tuned with a multi-label head in each cross-validation fold."
        ),
        "",
        *_section_use(),
        *_section_data(run_info),
        *_section_protocol(cv_results, run_info),
        *_section_pretraining(run_info),
        *_section_results(cv_results),
        *_section_figures(cv_results),
        *_section_usage(run_info),
        *_section_reproduce(cv_results, run_info),
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(
    output_dir: str | Path, cv_results: Mapping, run_info: Mapping | None = None
) -> Path:
    """Write OUTPUT_DIR/README.md as a Hugging Face model card and return its path.

    Args:
        output_dir: The run's output folder.
        cv_results: The dict that ``lungsound_ssl.summary.summarize_run`` returns.
        run_info: Optional facts about the run (data_dir, data_format,
            data_report, split_strategy, group_source, n_folds, encoder_type,
            base_model, pretrain_dir, pretrain_data, pretrain_saw_heldout,
            command, package_version, and license, datasets, model_name,
            hub_model_id, usage). A missing fact is written as "unknown".
    """
    run_info = dict(run_info or {})
    if run_info.get("n_folds") not in (None, cv_results["n_folds"]):
        logger.warning(
            "run_info.json lists %s folds but %d fold folders were summarised; the card reports the folders",
            run_info["n_folds"],
            cv_results["n_folds"],
        )
    path = Path(output_dir) / MODEL_CARD_FILE
    build_model_card(cv_results, run_info).save(path)
    logger.info("wrote model card %s", path)
    return path


def push_to_hub(
    output_dir: str | Path, repo_id: str, token: str | None = None, private: bool | None = None
) -> str:
    """Upload OUTPUT_DIR (without intermediate checkpoints) to a Hub model repository.

    Creates the repository when it does not exist. ``token`` None uses the
    login stored by ``hf auth login`` or the ``HF_TOKEN`` variable.

    Returns:
        The URL of the upload commit.
    """
    from huggingface_hub import create_repo, upload_folder

    output_dir = Path(output_dir)
    if not (output_dir / MODEL_CARD_FILE).is_file():
        raise FileNotFoundError(
            f"{output_dir / MODEL_CARD_FILE} not found; run finetune/summarize.py first"
        )
    create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    commit = upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        token=token,
        repo_type="model",
        commit_message="Upload cross-validated lung-sound model",
        ignore_patterns=list(UPLOAD_IGNORE_PATTERNS),
    )
    logger.info("uploaded %s to %s", output_dir, commit.commit_url)
    return commit.commit_url
