"""Fine-tune a multi-label lung-sound classifier for one cross-validation fold, or for all of them.

Examples:
    accelerate launch finetune/run.py --config configs/finetune/ast-tiny.yaml \\
        --data_dir ../shared/data/icbhi-cycles --model_name_or_path runs/pretrain \\
        --output_dir runs/finetune --fold 0
    accelerate launch finetune/run.py --config configs/finetune/ast-tiny.yaml --fold all
    python finetune/summarize.py --output_dir runs/finetune

Every option of the YAML file can be overridden on the command line; run with
--help to list them.
"""

from __future__ import annotations

import sys

from transformers import TrainingArguments

from lungsound_ssl.augment import AugmentConfig
from lungsound_ssl.config import parse_config, run_cli
from lungsound_ssl.data import DataConfig
from lungsound_ssl.finetuning import FinetuneArguments
from lungsound_ssl.folds import FoldConfig
from lungsound_ssl.logs import setup_logging
from lungsound_ssl.run_finetune import run_finetuning


def main(argv: list[str] | None = None) -> int:
    args, data_config, fold_config, augment, training_args = parse_config(
        (FinetuneArguments, DataConfig, FoldConfig, AugmentConfig, TrainingArguments), argv
    )
    setup_logging(training_args)
    run_finetuning(args, data_config, fold_config, augment, training_args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
