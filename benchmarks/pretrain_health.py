"""Print the health metrics of pretraining runs as Markdown table rows, first and last evaluation.

Reads ``pretraining_data.json`` and ``trainer_state.json`` of each output
folder that ``pretrain/run.py`` wrote. Rows have the columns: run, steps,
batch size per process, training seconds (the Trainer's ``train_runtime``, evaluations
included), then each metric as ``before -> after``.

Usage:
    python benchmarks/pretrain_health.py runs/pretrain runs/pretrain-wav2vec2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

METRICS = ("eval_alignment", "eval_uniformity", "eval_contrastive_top1", "eval_probe_macro_auroc")


def describe_run(output_dir: Path) -> str:
    """Return one Markdown table row for the run in ``output_dir``."""
    data_file = output_dir / "pretraining_data.json"
    state_file = output_dir / "trainer_state.json"
    for path in (data_file, state_file):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; pass the --output_dir of a finished pretrain/run.py run"
            )
    data = json.loads(data_file.read_text())
    state = json.loads(state_file.read_text())

    runtime = next(
        (entry["train_runtime"] for entry in state["log_history"] if "train_runtime" in entry), None
    )
    batch_size = state.get("train_batch_size")
    before, after = data["initial_metrics"], data["final_metrics"]
    cells = [
        output_dir.name,
        str(state["global_step"]),
        "n/a" if batch_size is None else str(batch_size),
        "n/a" if runtime is None else f"{runtime:.0f}",
    ]
    for name in METRICS:
        if name in before and name in after:
            cells.append(f"{before[name]:.3f} -> {after[name]:.3f}")
        else:
            cells.append("n/a")
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "output_dirs", nargs="+", type=Path, help="Output folders of pretrain/run.py."
    )
    args = parser.parse_args(argv)

    header = [
        "run",
        "steps",
        "batch per process",
        "train s",
        *(name.removeprefix("eval_") for name in METRICS),
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for output_dir in args.output_dirs:
        print(describe_run(output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
