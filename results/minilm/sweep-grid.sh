#!/usr/bin/env bash
# Issue 26: the fixed-LR grid an LR finder is calibrated against. With the study's baseline (2e-5) and uniform-5x
# (1e-4) cells, these two make a four-point grid 2e-5 / 5e-5 / 1e-4 / 2e-4: one LR for everything, nothing frozen
# (the baseline preset), the study's settings, seeds 1-3, the same folders.
# Resumable: run it again after a kill and it continues.   bash results/minilm/sweep-grid.sh   (repository root)
#   TASKS=mrpc SEEDS="1 2" bash results/minilm/sweep-grid.sh      runs a part of it
# Seed by seed (every task and both cells for seed 1 first), so a partial sweep already pairs every task.
set -euo pipefail
cd "$(dirname "$0")/../.."
source results/minilm/settings.sh  # PY, MODEL, DATA, COMMON: the study's settings
for seed in ${SEEDS:-1 2 3}; do
  $PY recipes/ablate.py run --tasks "${TASKS:-rte,mrpc,stsb,cola}" --seeds "$seed" --out results/minilm \
      --cell uniform-2.5x="--preset baseline --learning_rate 5e-5" \
      --cell uniform-10x="--preset baseline --learning_rate 2e-4" \
      -- "${COMMON[@]}" || true   # failed cells are recorded; the report lists them
done
$PY recipes/ablate.py report results/minilm --compare_to uniform-5x
