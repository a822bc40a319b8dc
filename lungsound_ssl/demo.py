"""The main job in one command: pretrain, fine-tune every fold, summarise.

Runs on the built-in synthetic demo set when no ``--data_dir`` is given, with
short schedules so that it finishes in minutes on 2 CPU cores. The steps are
the same as running, in order:

    accelerate launch pretrain/run.py --config configs/pretrain/ast-tiny.yaml ...
    accelerate launch finetune/run.py --config configs/finetune/ast-tiny.yaml --fold all ...
    python finetune/summarize.py --output_dir OUTPUT_DIR/finetune

Example:
    python -m lungsound_ssl.demo --output_dir runs/demo
    python -m lungsound_ssl.demo --data_dir ../shared/data/icbhi-cycles --pretrain_steps 300 --finetune_epochs 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from transformers import TrainingArguments

from lungsound_ssl.augment import AugmentConfig
from lungsound_ssl.config import parse_config, run_cli
from lungsound_ssl.data import DataConfig
from lungsound_ssl.finetuning import FinetuneArguments
from lungsound_ssl.folds import FoldConfig
from lungsound_ssl.logs import setup_logging
from lungsound_ssl.model_card import write_model_card
from lungsound_ssl.pretraining import PretrainArguments
from lungsound_ssl.run_finetune import run_finetuning
from lungsound_ssl.run_pretrain import run_pretraining
from lungsound_ssl.summary import summarize_run

logger = logging.getLogger("lungsound_ssl.demo")

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="Data folder; default: the built-in synthetic demo set.")
    parser.add_argument("--output_dir", default="runs/demo", help="Run folder (pretrain/ and finetune/ go inside).")
    parser.add_argument("--encoder", default="ast-tiny", choices=["ast-tiny", "wav2vec2-tiny"], help="Encoder preset.")
    parser.add_argument("--pretrain_steps", type=int, default=40, help="Pretraining optimisation steps.")
    parser.add_argument("--finetune_epochs", type=float, default=4, help="Fine-tuning epochs per fold.")
    parser.add_argument("--n_boot", type=int, default=200, help="Bootstrap resamples for the pooled 95%% intervals.")
    parser.add_argument("--cache_dir", default=None, help="Decoded-audio cache folder (default: the user cache).")
    args = parser.parse_args(argv)
    setup_logging()

    output_dir = Path(args.output_dir)
    data = ["--data_dir", args.data_dir] if args.data_dir else []
    cache = ["--cache_dir", args.cache_dir] if args.cache_dir else []
    pretrain_dir = output_dir / "pretrain"
    finetune_dir = output_dir / "finetune"

    logger.info("step 1/3: contrastive pretraining (%d steps) -> %s", args.pretrain_steps, pretrain_dir)
    pretrain_args = parse_config(
        (PretrainArguments, DataConfig, AugmentConfig, TrainingArguments),
        ["--config", str(CONFIG_DIR / "pretrain" / f"{args.encoder}.yaml"), *data, *cache,
         "--output_dir", str(pretrain_dir), "--max_steps", str(args.pretrain_steps),
         "--per_device_train_batch_size", "32", "--eval_steps", str(max(args.pretrain_steps // 2, 1)),
         "--save_steps", str(args.pretrain_steps), "--logging_steps", "5", "--report_to", "none"],
    )
    run_pretraining(*pretrain_args)

    logger.info("step 2/3: fine-tuning every fold from the pretrained encoder -> %s", finetune_dir)
    finetune_args = parse_config(
        (FinetuneArguments, DataConfig, FoldConfig, AugmentConfig, TrainingArguments),
        ["--config", str(CONFIG_DIR / "finetune" / f"{args.encoder}.yaml"), *data, *cache,
         "--model_name_or_path", str(pretrain_dir), "--output_dir", str(finetune_dir), "--fold", "all",
         "--num_train_epochs", str(args.finetune_epochs), "--logging_steps", "2", "--report_to", "none"],
    )
    run_finetuning(*finetune_args)

    logger.info("step 3/3: cross-validation summary and model card")
    cv_results = summarize_run(finetune_dir, n_boot=args.n_boot)
    run_info_path = finetune_dir / "run_info.json"
    run_info = json.loads(run_info_path.read_text()) if run_info_path.is_file() else {}
    if not args.data_dir:
        run_info["model_name"] = "lungsound-ssl demo on synthetic data (its scores only show that the pipeline runs)"
        run_info["datasets"] = ["synthetic (lungsound_ssl.synthetic, seed 0)"]
    run_info["command"] = "python -m lungsound_ssl.demo " + " ".join(argv if argv is not None else sys.argv[1:])
    card = write_model_card(finetune_dir, cv_results, run_info)
    mean = cv_results["mean"]
    logger.info(
        "done. Mean over %d folds: macro AUROC %.3f, macro F1 %.3f, ICBHI score %.3f",
        cv_results["n_folds"], mean.get("macro_auroc", float("nan")), mean.get("macro_f1", float("nan")),
        mean.get("icbhi_4class.score", float("nan")),
    )
    logger.info("model card: %s", card)
    logger.info("figures: %s", finetune_dir / "figures")
    logger.info("cross-validation results: %s", finetune_dir / "cv_results.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
