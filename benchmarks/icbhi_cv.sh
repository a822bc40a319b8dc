#!/usr/bin/env bash
# Pretrain the tiny AST on the ICBHI 2017 cycles, fine-tune all 5 patient-grouped
# folds from it and from scratch, summarise both and print them side by side.
#
# Usage: bash benchmarks/icbhi_cv.sh [DATA_DIR] [OUTPUT_DIR]
#   DATA_DIR    default ../shared/data/icbhi-cycles
#   OUTPUT_DIR  default runs/icbhi
# Extra settings through the environment:
#   PRETRAIN_STEPS (default 300), FINETUNE_EPOCHS (default 6), ENCODER (ast-tiny)
set -euo pipefail

data_dir="${1:-../shared/data/icbhi-cycles}"
out="${2:-runs/icbhi}"
encoder="${ENCODER:-ast-tiny}"
pretrain_steps="${PRETRAIN_STEPS:-300}"
finetune_epochs="${FINETUNE_EPOCHS:-6}"
mkdir -p "$out"

stamp() { date -u +%H:%M:%S; }

echo "$(stamp) pretraining $encoder for $pretrain_steps steps"
accelerate launch --config_file configs/accelerate/cpu.yaml pretrain/run.py \
    --config "configs/pretrain/$encoder.yaml" --data_dir "$data_dir" \
    --output_dir "$out/pretrain" --max_steps "$pretrain_steps" --report_to none

for variant in pretrained scratch; do
    if [[ "$variant" == pretrained ]]; then
        init=(--model_name_or_path "$out/pretrain")
    else
        init=()
    fi
    echo "$(stamp) fine-tuning all folds ($variant)"
    accelerate launch --config_file configs/accelerate/cpu.yaml finetune/run.py \
        --config "configs/finetune/$encoder.yaml" --data_dir "$data_dir" "${init[@]}" \
        --output_dir "$out/finetune-$variant" --fold all --num_train_epochs "$finetune_epochs" --report_to none
    python finetune/summarize.py --output_dir "$out/finetune-$variant"
done

echo "$(stamp) done"
python benchmarks/compare_cv.py pretrained="$out/finetune-pretrained" scratch="$out/finetune-scratch"
