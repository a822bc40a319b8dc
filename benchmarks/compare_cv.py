"""Print a markdown table comparing the cross-validation results of several fine-tuning runs.

Example:
    python benchmarks/compare_cv.py pretrained=runs/icbhi/finetune scratch=runs/icbhi/finetune-scratch

Each argument is NAME=OUTPUT_DIR of a run that ``finetune/summarize.py`` has
summarised (it reads OUTPUT_DIR/cv_results.json). Values are mean ± sample
standard deviation over the folds, then the pooled out-of-fold value with its
patient-level bootstrap 95 % interval.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = (
    ("macro AUROC", "macro_auroc"),
    ("macro F1", "macro_f1"),
    ("ICBHI score (4 classes)", "icbhi_4class.score"),
    ("ICBHI sensitivity", "icbhi_4class.sensitivity"),
    ("ICBHI specificity", "icbhi_4class.specificity"),
    ("wheeze AUROC", "per_label.wheeze.auroc"),
    ("crackle AUROC", "per_label.crackle.auroc"),
    ("normal AUROC", "per_label.normal.auroc"),
)


def _cell(results: dict, key: str) -> str:
    mean, std = results["mean"].get(key), results["std"].get(key)
    if mean is None:
        return "n/a"
    text = f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"
    interval = results.get("pooled", {}).get("bootstrap_95ci", {}).get(key)
    pooled = results.get("pooled", {}).get("metrics", {})
    if isinstance(interval, dict) and interval.get("low") is not None:
        text += f" (pooled, bootstrap mean {interval['mean']:.3f}, 95 % CI {interval['low']:.3f}–{interval['high']:.3f})"
    elif key in pooled and pooled[key] is not None:
        text += f" (pooled {pooled[key]:.3f})"
    return text


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    runs = []
    for item in argv:
        name, _, folder = item.partition("=")
        path = Path(folder) / "cv_results.json"
        if not path.is_file():
            print(f"error: {path} not found; run finetune/summarize.py --output_dir {folder} first", file=sys.stderr)
            return 1
        runs.append((name, json.loads(path.read_text())))
    print("| metric | " + " | ".join(name for name, _ in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for label, key in METRICS:
        print(f"| {label} | " + " | ".join(_cell(results, key) for _, results in runs) + " |")
    print("| folds | " + " | ".join(str(results["n_folds"]) for _, results in runs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
