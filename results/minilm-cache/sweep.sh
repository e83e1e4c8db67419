#!/usr/bin/env bash
# Frozen-feature cache on real data (issue 16): the GLUE recipe on all-MiniLM-L6-v2 with top3x5-freeze, without and with
# --cache_frozen, on RTE and MRPC, with the study's settings (results/minilm/sweep.sh).
#   bash results/minilm-cache/sweep.sh       (from the repository root)
# Seed 1: both cells, one after the other (the same machine speed: their times compare). Seeds 2-3: the cached cell
# only; the uncached cell of those seeds is the committed study's results/minilm/<task>/top3x5-freeze/seed<k> (the same
# command; seed 1 here reproduces its metrics, see results/minilm-cache/README.md).
# Resumable: run it again after a kill and it continues.
set -euo pipefail
cd "$(dirname "$0")/../.."
source results/minilm/settings.sh  # PY, MODEL, DATA, COMMON: the study's settings
CACHED=(--cell top3x5-freeze-cached="--preset top3x5-freeze --cache_frozen")
$PY recipes/ablate.py run --tasks rte,mrpc --seeds 1 --out results/minilm-cache --presets top3x5-freeze "${CACHED[@]}" \
    -- "${COMMON[@]}" || true
$PY recipes/ablate.py run --tasks rte,mrpc --seeds 2-3 --out results/minilm-cache "${CACHED[@]}" \
    -- "${COMMON[@]}" || true
