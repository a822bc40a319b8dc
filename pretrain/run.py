"""Contrastive self-supervised pretraining of a lung-sound encoder.

Examples:
    accelerate launch pretrain/run.py --config configs/pretrain/ast-tiny.yaml \\
        --data_dir ../shared/data/icbhi-cycles --output_dir runs/pretrain
    accelerate launch pretrain/run.py --config configs/pretrain/wav2vec2-tiny.yaml \\
        --data_dir ../shared/data/icbhi-cycles --extra_data_dirs ../shared/data/sprsound-subset \\
        --extra_crop_seconds 4 --output_dir runs/pretrain-w2v
    # continue an interrupted run from its newest checkpoint-N folder
    accelerate launch pretrain/run.py --config configs/pretrain/ast-tiny.yaml \\
        --data_dir ../shared/data/icbhi-cycles --output_dir runs/pretrain --resume_from_checkpoint last

On CPU, ``accelerate launch`` (1.16) starts each process with one thread
unless OMP_NUM_THREADS is set. Measured on 2 busy cores, one thread trained
about 3 times faster than two (BENCHMARKS.md, Pretraining).

Without --data_dir the built-in synthetic demo set is used. Every option of
the YAML file can be overridden on the command line; run with --help to list
them. The output folder loads with ``AudioEncoder.from_pretrained`` and
``finetune/run.py --model_name_or_path``.
"""

from __future__ import annotations

import sys

from transformers import TrainingArguments

from lungsound_ssl.augment import AugmentConfig
from lungsound_ssl.config import parse_config, run_cli
from lungsound_ssl.data import DataConfig
from lungsound_ssl.logs import setup_logging
from lungsound_ssl.pretraining import PretrainArguments
from lungsound_ssl.run_pretrain import run_pretraining


def main(argv: list[str] | None = None) -> int:
    args, data_config, augment, training_args = parse_config(
        (PretrainArguments, DataConfig, AugmentConfig, TrainingArguments), argv
    )
    setup_logging(training_args)
    run_pretraining(args, data_config, augment, training_args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
