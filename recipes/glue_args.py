"""Command-line arguments of the GLUE recipes (``glue.py`` and ``glue_trainer.py``), as HfArgumentParser dataclasses.

Names follow transformers' run_glue examples; the layer-wise options come from
``hf_layerwise.config.LayerwiseArguments`` (``--preset``, ``--top_k``, ``--freeze_below``...).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_layerwise.config import LayerwiseArguments, LayerwiseConfig


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "hub name or local folder (offline: the MiniLM package folder)"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "defaults to model_name_or_path"})


@dataclass
class DataArguments:
    task_name: str = field(metadata={"help": "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli"})
    data_dir: str | None = field(default=None, metadata={"help": "folder with the original GLUE TSVs (DIR/RTE/...)"})
    train_file: str | None = field(default=None, metadata={"help": "csv/tsv/json with the hub's columns"})
    validation_file: str | None = field(default=None, metadata={"help": "csv/tsv/json with the hub's columns"})
    max_seq_length: int = field(default=128)
    pad_to_max_length: bool = field(default=False, metadata={"help": "default: dynamic padding per batch"})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)


@dataclass
class TrainArguments:
    output_dir: str = field(metadata={"help": "results.json, checkpoints and logs go here"})
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    num_train_epochs: float = 3.0
    max_train_steps: int | None = field(default=None, metadata={"help": "overrides num_train_epochs"})
    warmup_ratio: float = 0.1
    lr_scheduler_type: str = "linear"
    gradient_accumulation_steps: int = 1
    seed: int = 42
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (through accelerate)"})
    cpu: bool = field(default=False, metadata={"help": "train on CPU processes (use with accelerate --multi_gpu)"})
    checkpointing_steps: str | None = field(default=None, metadata={"help": "N (every N steps) or 'epoch'"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a checkpoint folder or 'latest'"})
    logging_steps: int = 10
    report_to: str = field(default="none", metadata={"help": "none, tensorboard, wandb, all"})
    save_model: bool = field(default=False, metadata={"help": "save the fine-tuned model and tokenizer"})
    class_weights: str | None = field(default=None, metadata={"help": "'auto': weighted cross-entropy"})
    head_bias_init: str | None = field(default=None, metadata={"help": "'prior': head bias = log class priors"})
    reinit_top_layers: int = field(default=0, metadata={"help": "re-initialize the top N blocks"})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "evaluations without improvement"})
    eval_every_epoch: bool = field(default=True, metadata={"help": "evaluate after every epoch (else at the end)"})
    monitor: bool = field(default=False, metadata={"help": "training-health monitor: OUTPUT_DIR/health.jsonl"})
    monitor_every: int = field(default=50, metadata={"help": "measure every N optimizer steps"})

    def __post_init__(self) -> None:
        if self.class_weights not in (None, "auto"):
            raise ValueError(f"--class_weights {self.class_weights!r}: the only value is 'auto'")
        if self.head_bias_init not in (None, "prior"):
            raise ValueError(f"--head_bias_init {self.head_bias_init!r}: the only value is 'prior'")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"--mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16")
        if self.checkpointing_steps not in (None, "epoch") and not str(self.checkpointing_steps).isdigit():
            raise ValueError(f"--checkpointing_steps {self.checkpointing_steps!r}: use a number of steps or 'epoch'")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio {self.warmup_ratio}: must be in [0, 1)")


def parse_args(argv: list[str] | None = None):
    """(model, data, train, layerwise config) from the command line."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainArguments, LayerwiseArguments))
    model_args, data_args, train_args, lw_args = parser.parse_args_into_dataclasses(
        args=sys.argv[1:] if argv is None else argv)
    # --weight_decay is the recipe's weight decay unless --layerwise_weight_decay says otherwise
    cfg: LayerwiseConfig = lw_args.to_config(weight_decay=train_args.weight_decay)
    return model_args, data_args, train_args, lw_args, cfg
