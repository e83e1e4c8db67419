#!/usr/bin/env bash
# Issue 15: the LR range test's questions, beside the committed study (same tasks, settings and seeds; same folders).
# Resumable: run it again after a kill and it continues.   bash results/minilm/sweep-lr.sh   (repository root)
#   TASKS=mrpc SEEDS=1-3 CELLS=lr-auto bash results/minilm/sweep-lr.sh     runs a part of it
# lr-auto:           nothing frozen, one LR for everything, chosen by the range test per task and seed.
# lr-auto-top3:      that base LR (the same test, so the same value for the same seed) plus the top-3 multiplier a
#                    scan at that base LR suggests.
# uniform-5x-freeze: embeddings and blocks 1-3 frozen, 1e-4 everywhere.
# lr-find:           issue 26's finder as the recipes run it with no --lr_find_* option: the centred valley capped
#                    at the centred minimum's LR / 3, 33 steps over 1e-6..1e-2, a flat curve trains at the fallback.
#                    Run it as   CELLS=lr-find SEEDS=1-3 bash results/minilm/sweep-lr.sh
#                    Its runs were made with the fallback at 2e-5 (until stop 42; 5e-5 since stop 43: add
#                    --lr_find_fallback 2e-5 to the cell to remake them); today a run that falls back is the
#                    uniform-2.5x cell's run. Its STS-B runs were made before --lr_find_regression (stop 42): they ran
#                    the test on the plain MSE, which is now --lr_find_regression plain; today the same command trains
#                    STS-B at the fallback without a test (the default), i.e. the uniform-2.5x cell's run.
# The range test of lr-auto and lr-auto-top3: 40 steps from 1e-6 to 1e-1 (7.8 per decade; the library's default is
# 100 steps from 1e-7 to 1), to keep its cost near a tenth of a 3-epoch run on these small tasks.
# A curve without a usable valley (RTE: the loss stays at ln 2 until it diverges) trains at the study's 2e-5, what
# the user would have used without the test (--lr_find_fallback; results.json says "fallback": true).
set -euo pipefail
cd "$(dirname "$0")/../.."
source results/minilm/settings.sh  # PY, MODEL, DATA, COMMON: the study's settings
FIND=(--lr_find_steps 40 --lr_find_min_lr 1e-6 --lr_find_max_lr 1e-1 --lr_find_fallback 2e-5)
declare -A CELL=(
  [lr-auto]="--preset baseline --learning_rate auto ${FIND[*]}"
  [lr-auto-top3]="--preset baseline --top_k 3 --learning_rate auto --top_lr_multiplier auto ${FIND[*]}"
  [uniform-5x-freeze]="--preset baseline --freeze_fraction 0.5 --learning_rate 1e-4"
  [lr-find]="--preset baseline --learning_rate auto"
)
CELLS=${CELLS:-lr-auto,lr-auto-top3,uniform-5x-freeze}
ARGS=()
for name in ${CELLS//,/ }; do ARGS+=(--cell "$name=${CELL[$name]}"); done
$PY recipes/ablate.py run --tasks "${TASKS:-rte,mrpc,stsb,cola}" --seeds "${SEEDS:-1-5}" --out results/minilm \
    "${ARGS[@]}" -- "${COMMON[@]}" || true   # failed cells are recorded; the report lists them
$PY recipes/ablate.py report results/minilm --compare_to uniform-5x
