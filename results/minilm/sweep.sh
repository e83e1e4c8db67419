#!/usr/bin/env bash
# The layer-wise LR study on all-MiniLM-L6-v2 (issue 5). Resumable: run it again after a kill and it continues.
#   bash results/minilm/sweep.sh            (from the repository root; takes ~15-18 h on 2 CPU cores)
# Phase 0: seed 1 of the four main cells. Phase 1: every cell, seeds 1-3.  Phase 2: seeds 4-5 for the four main cells.  Then the report.
set -euo pipefail
cd "$(dirname "$0")/../.."
source results/minilm/settings.sh  # PY, MODEL, DATA, COMMON: the study's settings
# Phase 0: seed 1 of the four main cells first, so an early partial summary already holds the claim's comparison
# (baseline, the uniform-5x control, the full recipe, top-3 at 5x). Same folders and commands as phase 1.
$PY recipes/ablate.py run --tasks rte,mrpc,stsb,cola --seeds 1 --out results/minilm --presets baseline \
    --cell uniform-5x="--preset baseline --learning_rate 1e-4" --cell top3x5-freeze="--preset top3x5-freeze" \
    --cell top3x5="--preset top3x5" -- "${COMMON[@]}" || true
$PY recipes/ablate.py run --tasks rte,mrpc,stsb,cola --seeds 1-3 --out results/minilm \
    --presets baseline,top3x5,top3x5-freeze,top3x10,llrd-0.95 --cell uniform-5x="--preset baseline --learning_rate 1e-4" \
    -- "${COMMON[@]}" || true   # failed cells are recorded; the report lists them
$PY recipes/ablate.py run --tasks rte,mrpc,stsb,cola --seeds 4-5 --out results/minilm \
    --presets baseline,top3x5,top3x5-freeze --cell uniform-5x="--preset baseline --learning_rate 1e-4" \
    -- "${COMMON[@]}" || true
$PY recipes/ablate.py report results/minilm --compare_to uniform-5x
