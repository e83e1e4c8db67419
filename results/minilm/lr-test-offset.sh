#!/usr/bin/env bash
# Issue 26 (stop 42): the recipes' range test on STS-B with the label offset (--lr_find_regression offset: the loss is
# the MSE of the predictions offset by the training labels' mean), without training: seeds 1-3, the study's settings
# and batches (the lr-find cell's test), into results/minilm/stsb/lr-test-offset/seed<k>/lr_find.json. lr_rules.py
# scores each pick on the seed's fixed-LR grid, interpolated, beside the picks of the lr-find runs' tests (no offset).
#   PYTHON=.venv/bin/python bash results/minilm/lr-test-offset.sh      (repository root; a done seed is skipped)
set -euo pipefail
cd "$(dirname "$0")/../.."
source results/minilm/settings.sh  # PY, MODEL, DATA
for seed in ${SEEDS:-1 2 3}; do
  out=results/minilm/stsb/lr-test-offset/seed$seed
  if [ -f "$out/lr_find.json" ]; then echo "$out: done"; continue; fi
  # the lr-find cell's settings (COMMON) less the options recipes/lr_find.py refuses because only training reads them
  $PY recipes/lr_find.py --model_name_or_path "$MODEL" --data_dir "$DATA" --per_device_train_batch_size 32 \
      --max_seq_length 128 --weight_decay 0.01 --task_name stsb --seed "$seed" --preset baseline \
      --lr_find_regression offset --scan "" --output_dir "$out"
done
