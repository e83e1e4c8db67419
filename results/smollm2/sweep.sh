#!/usr/bin/env bash
# Issue 28: layer-wise LoRA on a real decoder (SmolLM2-135M-Instruct), RTE and MRPC, 3 seeds, seed by seed.
# Resumable: run it again after a kill and it continues.   bash results/smollm2/sweep.sh   (repository root)
#   TASKS=mrpc SEEDS="1" CELLS=lora,loraplus bash results/smollm2/sweep.sh        runs a part of it
# Cells (all LoRA r=8 at base LR 2e-4, settings.sh):
#   lora            one LR for every adapter
#   loraplus        LoRA+: B matrices at 16x
#   lora-top3x5     the top 3 of 30 blocks' adapters at 5x
#   lora-llrd       layer-wise decay 0.95 (block d at 0.95^(31-d): the bottom block's adapters at 0.21x)
#   lora-freeze50   adapters of the bottom half (blocks 1-15) frozen: no gradient, no optimizer state below the cut
# Not in the default CELLS, a sizing probe (added after seed 1 of MRPC, where every cell above scored at the majority
# class): plain LoRA at 5x the base LR (1e-3), to tell a too-small LR from too few examples/steps:
#   TASKS=mrpc SEEDS=1 CELLS=lora-lr1e-3 bash results/smollm2/sweep.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
declare -A CELL=(
  [lora]="--preset baseline"
  [loraplus]="--preset baseline --loraplus_ratio 16"
  [lora-top3x5]="--preset top3x5"
  [lora-llrd]="--preset llrd-0.95"
  [lora-freeze50]="--preset baseline --freeze_fraction 0.5"
  [lora-lr1e-3]="--preset baseline --learning_rate 1e-3"
)
CELLS=${CELLS:-lora,loraplus,lora-top3x5,lora-llrd,lora-freeze50}
ARGS=()
for name in ${CELLS//,/ }; do
  if [ -z "${CELL[$name]+set}" ]; then echo "error: unknown cell '$name' in CELLS; known: ${!CELL[*]}" >&2; exit 2; fi
  ARGS+=(--cell "$name=${CELL[$name]}")
done
source results/smollm2/settings.sh  # after the cells are checked; PY, MODEL, DATA, COMMON
for seed in ${SEEDS:-1 2 3}; do
  $PY recipes/ablate.py run --tasks "${TASKS:-rte,mrpc}" --seeds "$seed" --out results/smollm2 \
      "${ARGS[@]}" -- "${COMMON[@]}" || true   # failed cells are recorded; the report lists them
done
$PY recipes/ablate.py report results/smollm2 --baseline lora
