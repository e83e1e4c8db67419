"""Command-line arguments of the GLUE recipes (``recipes/glue.py`` and ``recipes/glue_trainer.py``).

``HfArgumentParser`` dataclasses named like transformers' ``run_glue`` examples; the layer-wise options come from
:class:`hf_layerwise.config.LayerwiseArguments` (``--preset``, ``--top_k``, ``--freeze_below``...). Every value is
checked when it is parsed, before any data or model is loaded: a zero that would mean nothing (``--max_train_samples
0``, ``--checkpointing_steps 0``) is refused, not read as "all" or "never".
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from accelerate.utils import DynamoBackend
from transformers import HfArgumentParser, SchedulerType

from ..config import LayerwiseArguments, LayerwiseConfig
from ..errors import UsageError, one_line
from ..lr_finder import RULES

__all__ = ["ModelArguments", "DataArguments", "TrainArguments", "RecipeArguments", "parse_args", "REPORT_TO"]

REPORT_TO = ("none", "tensorboard", "wandb", "all")
SCHEDULERS = tuple(s.value for s in SchedulerType)
BACKENDS = tuple(b.value for b in DynamoBackend if b.value != "NO")


def _at_least(flag: str, value: Any, low: int | float, unset: str = "") -> None:
    if value is not None and not value >= low:
        raise UsageError(f"{flag} {value}: must be >= {low}{unset}")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "hub name or local folder (offline: the MiniLM package folder)"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "defaults to model_name_or_path"})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "a saved classification head of another size is replaced by a new one (as in run_glue)"})


@dataclass
class DataArguments:
    task_name: str = field(metadata={"help": "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli"})
    data_dir: str | None = field(default=None, metadata={"help": "folder with the original GLUE TSVs (DIR/RTE/...)"})
    train_file: str | None = field(default=None, metadata={"help": "csv/tsv/json with the hub's columns"})
    validation_file: str | None = field(default=None, metadata={"help": "csv/tsv/json with the hub's columns"})
    max_seq_length: int = field(default=128, metadata={"help": "at most the model's position embeddings"})
    pad_to_max_length: bool = field(default=False, metadata={"help": "default: dynamic padding per batch"})
    pad_to_multiple_of: int | None = field(default=None, metadata={
        "help": "pad each batch to a multiple of N tokens (default: 32 with --torch_compile, so that few shapes are "
                "compiled; 8 with mixed precision; none otherwise)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use the first N examples of each dev set"})

    def __post_init__(self) -> None:
        from .data import get_task

        try:
            self.task_name = get_task(self.task_name).name
        except ValueError as err:
            raise UsageError(f"--task_name: {one_line(err)}") from None
        _at_least("--max_seq_length", self.max_seq_length, 8)
        _at_least("--pad_to_multiple_of", self.pad_to_multiple_of, 1)
        for flag in ("max_train_samples", "max_eval_samples"):
            _at_least(f"--{flag}", getattr(self, flag), 1, " (leave it unset to use every example)")
        if self.data_dir is not None and (self.train_file or self.validation_file):
            raise UsageError("--data_dir and --train_file/--validation_file both given: pass one of them")
        if (self.train_file is None) != (self.validation_file is None):
            raise UsageError("pass both --train_file and --validation_file (or --data_dir)")


@dataclass
class TrainArguments:
    output_dir: str = field(metadata={"help": "results.json, checkpoints and logs go here"})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "replace the run already in output_dir (its results, checkpoints and logs are deleted first)"})
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    learning_rate: float = field(default=2e-5, metadata={
        "help": "base learning rate, or 'auto': an LR range test before training chooses it (lr_find.json/png)"})
    weight_decay: float = 0.01
    num_train_epochs: float = 3.0
    max_train_steps: int | None = field(default=None, metadata={"help": "overrides num_train_epochs"})
    warmup_ratio: float = 0.1
    lr_scheduler_type: str = field(default="linear", metadata={"help": ", ".join(SCHEDULERS)})
    gradient_accumulation_steps: int = 1
    seed: int = 42
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (through accelerate)"})
    cpu: bool = field(default=False, metadata={"help": "train on CPU processes (use with accelerate --multi_gpu)"})
    dataloader_num_workers: int | None = field(default=None, metadata={
        "help": "processes preparing batches (default: 2 per training process on CUDA, with pinned memory; 0 on "
                "the CPU, where they would take cores from training)"})
    torch_compile: bool = field(default=False, metadata={"help": "compile the model (torch.compile via accelerate)"})
    torch_compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend"})
    checkpointing_steps: str | None = field(default=None, metadata={"help": "N (every N steps) or 'epoch'"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a checkpoint folder or 'latest'"})
    logging_steps: int = 10
    report_to: str = field(default="none", metadata={"help": ", ".join(REPORT_TO)})
    save_model: bool = field(default=False, metadata={"help": "save the fine-tuned model and tokenizer"})
    class_weights: str | None = field(default=None, metadata={"help": "'auto': weighted cross-entropy"})
    head_bias_init: str | None = field(default=None, metadata={"help": "'prior': head bias = log class priors"})
    reinit_top_layers: int = field(default=0, metadata={"help": "re-initialize the top N blocks"})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "evaluations without improvement"})
    eval_every_epoch: bool = field(default=True, metadata={"help": "evaluate after every epoch (else at the end)"})
    monitor: bool = field(default=False, metadata={"help": "training-health monitor: OUTPUT_DIR/health.jsonl"})
    monitor_every: int = field(default=50, metadata={"help": "measure every N optimizer steps"})
    cache_max_gb: float = field(default=4.0, metadata={
        "help": "with --cache_frozen: GiB of cached states kept in memory per process; the rest goes to a "
                "memory-mapped file in OUTPUT_DIR/feature_cache (deleted at the end)"})
    cache_dtype: str = field(default="float16", metadata={"help": "with --cache_frozen: float16, bfloat16 or float32"})
    lr_find_steps: int = field(default=100, metadata={"help": "with 'auto': steps of each LR range test (at most)"})
    lr_find_min_lr: float = field(default=1e-7, metadata={"help": "with --learning_rate auto: the range's floor"})
    lr_find_max_lr: float = field(default=1.0, metadata={"help": "with --learning_rate auto: the range's ceiling"})
    lr_find_rule: str = field(default="valley", metadata={
        "help": "with 'auto': valley (fastai's default), steep or minimum (the lowest loss's LR / 10)"})
    lr_find_fallback: float | None = field(default=None, metadata={
        "help": "with --learning_rate auto: the learning rate to train with when the range test finds no usable "
                "valley (recorded as such in results.json); default: stop with an error"})
    debug: bool = field(default=False, metadata={"help": "show the traceback of an error (or HF_LAYERWISE_DEBUG=1)"})

    def __post_init__(self) -> None:
        if not self.output_dir.strip():
            raise UsageError("--output_dir is empty: pass the folder for results, checkpoints and logs")
        _at_least("--dataloader_num_workers", self.dataloader_num_workers, 0)
        for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "monitor_every", "max_train_steps", "early_stopping_patience"):
            _at_least(f"--{flag}", getattr(self, flag), 1)
        _at_least("--reinit_top_layers", self.reinit_top_layers, 0)
        _at_least("--seed", self.seed, 0)
        if self.learning_rate != "auto" and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UsageError(f"--learning_rate {self.learning_rate}: must be a finite number > 0, or auto")
        _at_least("--lr_find_steps", self.lr_find_steps, 5)
        if not (math.isfinite(self.lr_find_max_lr) and 0 < self.lr_find_min_lr < self.lr_find_max_lr):
            raise UsageError(f"--lr_find_min_lr {self.lr_find_min_lr} / --lr_find_max_lr {self.lr_find_max_lr}: need "
                             "0 < min < max (finite)")
        if self.lr_find_fallback is not None and not (math.isfinite(self.lr_find_fallback)
                                                      and self.lr_find_fallback > 0):
            raise UsageError(f"--lr_find_fallback {self.lr_find_fallback}: must be a finite number > 0")
        if self.lr_find_rule not in RULES:
            raise UsageError(f"--lr_find_rule {self.lr_find_rule!r}: use one of {', '.join(RULES)}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"--weight_decay {self.weight_decay}: must be a finite number >= 0")
        if not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise UsageError(f"--num_train_epochs {self.num_train_epochs}: must be > 0 (or set --max_train_steps)")
        if not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"--warmup_ratio {self.warmup_ratio}: must be in [0, 1)")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise UsageError(f"--lr_scheduler_type {self.lr_scheduler_type!r}: use one of {', '.join(SCHEDULERS)}")
        if self.class_weights not in (None, "auto"):
            raise UsageError(f"--class_weights {self.class_weights!r}: the only value is 'auto'")
        if self.head_bias_init not in (None, "prior"):
            raise UsageError(f"--head_bias_init {self.head_bias_init!r}: the only value is 'prior'")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UsageError(f"--mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16")
        if self.torch_compile and self.torch_compile_backend.upper() not in BACKENDS:
            raise UsageError(f"--torch_compile_backend {self.torch_compile_backend!r}: use one of "
                             f"{', '.join(b.lower() for b in BACKENDS)}")
        if not (math.isfinite(self.cache_max_gb) and self.cache_max_gb >= 0):
            raise UsageError(f"--cache_max_gb {self.cache_max_gb}: must be a finite number >= 0")
        if self.cache_dtype not in ("float16", "bfloat16", "float32"):
            raise UsageError(f"--cache_dtype {self.cache_dtype!r}: use float16, bfloat16 or float32")
        if self.report_to not in REPORT_TO:
            raise UsageError(f"--report_to {self.report_to!r}: use one of {', '.join(REPORT_TO)}")
        steps = self.checkpointing_steps
        if steps is not None and steps != "epoch" and not (str(steps).isdigit() and int(steps) >= 1):
            raise UsageError(f"--checkpointing_steps {steps!r}: use a number of steps >= 1 or 'epoch' "
                             "(leave it unset for no checkpoints)")
        if self.early_stopping_patience is not None and not self.eval_every_epoch:
            raise UsageError("--early_stopping_patience needs an evaluation after every epoch: drop "
                             "--eval_every_epoch False")
        if self.overwrite_output_dir and self.resume_from_checkpoint:
            raise UsageError("--overwrite_output_dir deletes the checkpoints --resume_from_checkpoint would resume "
                             "from: pass one of them")

    @property
    def checkpoint_every(self) -> int | None:
        """``--checkpointing_steps`` as a number of steps (None for 'epoch' or unset)."""
        steps = self.checkpointing_steps
        return int(steps) if steps is not None and steps != "epoch" else None


@dataclass
class RecipeArguments:
    """Everything a GLUE recipe was asked to do, parsed and checked; ``layerwise`` is the resolved config."""

    model: ModelArguments
    data: DataArguments
    train: TrainArguments
    layerwise_args: LayerwiseArguments
    layerwise: LayerwiseConfig
    auto_top_multiplier: bool = False  # --top_lr_multiplier auto: a multiplier scan chooses it before training


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors are :class:`UsageError` (one line) instead of usage text and ``exit(2)``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def parse_args(argv: Sequence[str] | None = None) -> RecipeArguments:
    """Parse and check the command line of a GLUE recipe.

    Example:
        >>> args = parse_args(["--task_name", "rte", "--model_name_or_path", "m", "--output_dir", "o",
        ...                    "--preset", "top3x5"])
        >>> args.layerwise.top_lr_multiplier, args.data.task_name
        (5.0, 'rte')

    Raises:
        UsageError: an unknown option, a value of the wrong type or out of range, or an impossible
            layer-wise config; the message names the option.
    """
    parser = _Parser((ModelArguments, DataArguments, TrainArguments, LayerwiseArguments))
    for flag in ("--learning_rate", "--top_lr_multiplier"):  # a number, or 'auto' (the LR range test chooses)
        parser._option_string_actions[flag].type = _number_or_auto
    try:
        model, data, train, lw = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    except UsageError:
        raise
    except ValueError as err:  # HfArgumentParser: "Some specified arguments are not used ..."
        raise UsageError(f"{one_line(err)} (see --help)") from None
    auto_top = lw.top_lr_multiplier == "auto"
    if auto_top:
        lw.top_lr_multiplier = None  # the preset's (or the default 5) until the scan has chosen
    try:
        # --weight_decay is the recipe's weight decay unless --layerwise_weight_decay says otherwise
        cfg = lw.to_config(weight_decay=train.weight_decay)
    except (ValueError, TypeError) as err:
        raise UsageError(f"layer-wise options: {one_line(err)}") from None
    if auto_top:
        lw.top_lr_multiplier = "auto"
        if not cfg.top_k:
            raise UsageError("--top_lr_multiplier auto scans the multiplier of the top-k blocks, but top_k is 0: pass "
                             "--top_k N (or a preset with top blocks, such as top3x5)")
    if (train.learning_rate == "auto" or auto_top) and cfg.unfreeze_every:
        raise UsageError("--learning_rate/--top_lr_multiplier auto with gradual unfreezing: the range test would see "
                         "only the head training; pass numbers, or drop --unfreeze_every")
    return RecipeArguments(model, data, train, lw, cfg, auto_top_multiplier=auto_top)


def _number_or_auto(value: str) -> float | str:
    return "auto" if value.strip().lower() == "auto" else float(value)


_number_or_auto.__name__ = "number (or auto)"  # argparse: "invalid number (or auto) value: 'x'"
