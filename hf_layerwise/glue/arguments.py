"""Command-line arguments of the GLUE recipes (``recipes/glue.py`` and ``recipes/glue_trainer.py``).

``HfArgumentParser`` dataclasses named like transformers' ``run_glue`` examples; the layer-wise options come from
:class:`hf_layerwise.config.LayerwiseArguments` (``--preset``, ``--top_k``, ``--freeze_below``...). Every value is
checked when it is parsed, before any data or model is loaded: a zero that would mean nothing (``--max_train_samples
0``, ``--checkpointing_steps 0``) is refused, not read as "all" or "never".
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from accelerate.utils import DynamoBackend
from transformers import HfArgumentParser, SchedulerType

from ..config import LayerwiseArguments, LayerwiseConfig
from ..errors import UsageError, one_line
from ..lr_finder import DEFAULT_RULE, RULES

__all__ = ["ModelArguments", "DataArguments", "TrainArguments", "RecipeArguments", "parse_args", "REPORT_TO"]

REPORT_TO = ("none", "tensorboard", "wandb", "all")
# The range test of --learning_rate auto, as calibrated on the MiniLM study (issue 26, results/minilm/lr_rules.md):
# 8 steps per decade from 1e-6 to 1e-2 (past every curve's lowest loss; each step is one training batch).
# --learning_rate auto on a regression task: no test (train at the fallback), the test on the plain MSE, or on the MSE
# with the predictions offset by the training labels' mean (issue 26, README "Calibrating the finder")
LR_FIND_REGRESSION = ("fallback", "plain", "offset")
LR_FIND_DEFAULTS = {"lr_find_steps": 33, "lr_find_min_lr": 1e-6, "lr_find_max_lr": 1e-2, "lr_find_rule": DEFAULT_RULE}
# The LR of --learning_rate auto where the range test gives no answer (a curve without a usable valley; a regression
# task): the fixed LR with the best four-task average on the MiniLM grid (issue 26, results/minilm/lr_rules.md "The
# fallback LR": 5e-5 is -0.25 from the best LR per task, 2e-5 (run_glue's, the fallback until stop 42) -4.62)
LR_FIND_FALLBACK = 5e-5
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
    lora_r: int | None = field(default=None, metadata={
        "help": "train PEFT LoRA adapters of this rank (and the classification head) instead of the whole model; the "
                "layer-wise options then apply to the adapters (pip install 'hf-layerwise[peft]')"})
    lora_alpha: float | None = field(default=None, metadata={"help": "with --lora_r: LoRA's alpha (default 2 x r)"})
    lora_dropout: float | None = field(default=None, metadata={
        "help": "with --lora_r: dropout on the adapters' input (default 0.05)"})
    lora_target_modules: str | None = field(default=None, metadata={
        "help": "with --lora_r: comma-separated names of the modules to adapt, e.g. q_proj,v_proj (default: PEFT's "
                "choice for the architecture)"})

    def __post_init__(self) -> None:
        if self.lora_r is None:
            given = [f"--{k}" for k in ("lora_alpha", "lora_dropout", "lora_target_modules")
                     if getattr(self, k) is not None]
            if given:
                raise UsageError(f"{given[0]} applies only with --lora_r (LoRA adapters): add --lora_r R, or drop it")
            return
        if self.lora_r < 1:
            raise UsageError(f"--lora_r {self.lora_r}: the LoRA rank must be an integer >= 1 (typically 4-64)")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise UsageError(f"--lora_alpha {self.lora_alpha}: must be a finite number > 0")
        if self.lora_dropout is not None and not 0 <= self.lora_dropout < 1:
            raise UsageError(f"--lora_dropout {self.lora_dropout}: must be in [0, 1)")
        if self.lora_target_modules is not None and not self.target_modules:
            raise UsageError(f"--lora_target_modules {self.lora_target_modules!r}: no module names; give them "
                             "comma-separated, e.g. q_proj,v_proj (or leave it out for PEFT's default)")

    @property
    def target_modules(self) -> list[str] | None:
        """``--lora_target_modules`` as a list (None: PEFT's default for the architecture)."""
        if self.lora_target_modules is None:
            return None
        return [m.strip() for m in self.lora_target_modules.split(",") if m.strip()]


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
        if self.pad_to_max_length and self.pad_to_multiple_of is not None:
            raise UsageError(f"--pad_to_multiple_of {self.pad_to_multiple_of} applies to dynamic padding, but "
                             f"--pad_to_max_length pads every example to --max_seq_length {self.max_seq_length}: "
                             "drop one of them")
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
    warmup_ratio: float | None = field(default=None, metadata={
        "help": "fraction of the steps with a linear warmup (default 0.1; 0 with reduce_lr_on_plateau and greedy, "
                "which have none)"})
    lr_scheduler_type: str = field(default="linear", metadata={"help": ", ".join(SCHEDULERS)})
    lr_scheduler_kwargs: str | None = field(default=None, metadata={
        "help": "JSON object of the scheduler's own arguments, as run_glue takes them, e.g. "
                "'{\"num_decay_steps\": 100}' for warmup_stable_decay, '{\"min_lr_rate\": 0.1}' for cosine_with_min_lr, "
                "'{\"patience\": 1}' for reduce_lr_on_plateau (which steps on the task's dev metric after every "
                "evaluation)"})
    gradient_accumulation_steps: int = 1
    seed: int = 42
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (through accelerate)"})
    cpu: bool = field(default=False, metadata={"help": "train on CPU processes (use with accelerate --multi_gpu)"})
    dataloader_num_workers: int | None = field(default=None, metadata={
        "help": "processes preparing batches (default: 2 per training process on CUDA, with pinned memory; 0 on "
                "the CPU, where they would take cores from training)"})
    torch_compile: bool = field(default=False, metadata={"help": "compile the model (torch.compile via accelerate)"})
    torch_compile_backend: str | None = field(default=None, metadata={
        "help": "with --torch_compile: its backend (default inductor)"})
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
    monitor_every: int | None = field(default=None, metadata={
        "help": "with --monitor: measure every N optimizer steps (default 50)"})
    cache_max_gb: float | None = field(default=None, metadata={
        "help": "with --cache_frozen: GiB of cached states kept in memory per process (default 4); the rest goes to "
                "a memory-mapped file in OUTPUT_DIR/feature_cache (deleted at the end)"})
    cache_dtype: str | None = field(default=None, metadata={
        "help": "with --cache_frozen: float16 (default), bfloat16 or float32"})
    lr_find_steps: int | None = field(default=None, metadata={
        "help": f"with 'auto': steps of each LR range test (at most; default {LR_FIND_DEFAULTS['lr_find_steps']}: "
                "8 per decade over the default range)"})
    lr_find_min_lr: float | None = field(default=None, metadata={
        "help": f"with --learning_rate auto: the range's floor (default {LR_FIND_DEFAULTS['lr_find_min_lr']:g})"})
    lr_find_max_lr: float | None = field(default=None, metadata={
        "help": f"with --learning_rate auto: the range's ceiling (default {LR_FIND_DEFAULTS['lr_find_max_lr']:g})"})
    lr_find_rule: str | None = field(default=None, metadata={
        "help": f"with 'auto': {DEFAULT_RULE} (the default: fastai's valley on the lag-free curve), or fastai's "
                "valley, steep or minimum (on the smoothed curve); every pick is capped at a third of the LR of the "
                "lowest loss"})
    lr_find_fallback: float | None = field(default=None, metadata={
        "help": "with --learning_rate auto: the learning rate to train with when the range test finds no usable "
                f"valley (recorded as such in results.json; default {LR_FIND_FALLBACK:g})"})
    lr_find_regression: str | None = field(default=None, metadata={
        "help": "with --learning_rate auto on a regression task (stsb): 'fallback' (the recipes' default) trains at "
                "--lr_find_fallback without a range test, which cannot see there which LR a run tolerates (README, "
                "'Calibrating the finder'); 'plain': the test on the model's own MSE (recipes/lr_find.py's "
                "default); 'offset': the test on the MSE of the predictions offset by the training labels' mean"})
    debug: bool = field(default=False, metadata={"help": "show the traceback of an error (or HF_LAYERWISE_DEBUG=1)"})

    def __post_init__(self) -> None:
        if not self.output_dir.strip():
            raise UsageError("--output_dir is empty: pass the folder for results, checkpoints and logs")
        _at_least("--dataloader_num_workers", self.dataloader_num_workers, 0)
        for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "monitor_every", "max_train_steps", "early_stopping_patience"):
            _at_least(f"--{flag}", getattr(self, flag), 1)
        _at_least("--reinit_top_layers", self.reinit_top_layers, 0)
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"--seed {self.seed}: must be in [0, 2**32) (numpy's seed range)")
        if self.learning_rate != "auto" and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UsageError(f"--learning_rate {self.learning_rate}: must be a finite number > 0, or auto")
        _at_least("--lr_find_steps", self.lr_find_steps, 5)
        low = self.lr_find_min_lr or LR_FIND_DEFAULTS["lr_find_min_lr"]
        high = self.lr_find_max_lr or LR_FIND_DEFAULTS["lr_find_max_lr"]
        if not (math.isfinite(high) and 0 < low < high) or 0 in (self.lr_find_min_lr, self.lr_find_max_lr):
            raise UsageError(f"--lr_find_min_lr {low} / --lr_find_max_lr {high}: need 0 < min < max (finite)")
        if self.lr_find_fallback is not None and not (math.isfinite(self.lr_find_fallback)
                                                      and self.lr_find_fallback > 0):
            raise UsageError(f"--lr_find_fallback {self.lr_find_fallback}: must be a finite number > 0")
        if self.lr_find_regression not in (None, *LR_FIND_REGRESSION):
            raise UsageError(f"--lr_find_regression {self.lr_find_regression!r}: use one of "
                             f"{', '.join(LR_FIND_REGRESSION)}")
        if self.lr_find_rule is not None and self.lr_find_rule not in RULES:
            raise UsageError(f"--lr_find_rule {self.lr_find_rule!r}: use one of {', '.join(RULES)}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"--weight_decay {self.weight_decay}: must be a finite number >= 0")
        if not (math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0):
            raise UsageError(f"--num_train_epochs {self.num_train_epochs}: must be > 0 (or set --max_train_steps)")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise UsageError(f"--warmup_ratio {self.warmup_ratio}: must be in [0, 1)")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise UsageError(f"--lr_scheduler_type {self.lr_scheduler_type!r}: use one of {', '.join(SCHEDULERS)}")
        if self.class_weights not in (None, "auto"):
            raise UsageError(f"--class_weights {self.class_weights!r}: the only value is 'auto'")
        if self.head_bias_init not in (None, "prior"):
            raise UsageError(f"--head_bias_init {self.head_bias_init!r}: the only value is 'prior'")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UsageError(f"--mixed_precision {self.mixed_precision!r}: use no, fp16 or bf16")
        if self.torch_compile_backend is not None and self.torch_compile_backend.upper() not in BACKENDS:
            raise UsageError(f"--torch_compile_backend {self.torch_compile_backend!r}: use one of "
                             f"{', '.join(b.lower() for b in BACKENDS)}")
        if self.cache_max_gb is not None and not (math.isfinite(self.cache_max_gb) and self.cache_max_gb >= 0):
            raise UsageError(f"--cache_max_gb {self.cache_max_gb}: must be a finite number >= 0")
        if self.cache_dtype is not None and self.cache_dtype not in ("float16", "bfloat16", "float32"):
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

    def resolve(self, *, regression: bool, auto: bool, cache_frozen: bool, range_tests: bool = False,
                scan: bool = False) -> None:
        """Refuse options that would do nothing with the others (each names what it needs), then fill the defaults of
        the options left unset. Called by :func:`parse_args` once the task and the layer-wise options are known."""
        needs = [  # (option, what it needs, whether it has it)
            ("cache_max_gb", "--cache_frozen", cache_frozen), ("cache_dtype", "--cache_frozen", cache_frozen),
            *[(f"lr_find_{k}", "--learning_rate auto or --top_lr_multiplier auto", auto)
              for k in ("steps", "min_lr", "max_lr", "rule", "fallback", "regression")],
            ("torch_compile_backend", "--torch_compile", self.torch_compile),
            ("monitor_every", "--monitor", self.monitor),
        ]
        for name, need, present in needs:
            if getattr(self, name) is not None and not present:
                raise UsageError(f"--{name} {getattr(self, name)} applies only with {need}: add it, or drop --{name}")
        if regression and self.class_weights:
            raise UsageError("--class_weights auto weighs classes, but this task is a regression (no classes): drop it")
        if not regression and self.lr_find_regression:
            raise UsageError(f"--lr_find_regression {self.lr_find_regression} says how a regression task finds its "
                             "learning rate, but this task is a classification: drop it")
        if range_tests and self.lr_find_regression == "fallback":
            raise UsageError("--lr_find_regression fallback trains without a range test; recipes/lr_find.py runs "
                             "one: use plain or offset (or recipes/glue.py)")
        base_lr_auto = self.learning_rate == "auto" or range_tests  # a scan alone keeps the given base LR
        if not base_lr_auto and self.lr_find_regression in ("fallback", "plain"):
            raise UsageError(f"--lr_find_regression {self.lr_find_regression} says how --learning_rate auto finds the "
                             f"base LR, but it is given ({self.learning_rate:g}): drop it (the multiplier scan runs "
                             "on the plain MSE; offset changes that)")
        if regression and base_lr_auto and self.lr_find_regression is None:
            self.lr_find_regression = "plain" if range_tests else "fallback"
        given = [f"--lr_find_{k}" for k in ("steps", "min_lr", "max_lr", "rule") if getattr(self, f"lr_find_{k}")]
        if regression and self.lr_find_regression == "fallback" and not scan and given:
            raise UsageError(f"{' '.join(given)}: on a regression task --learning_rate auto runs no range test (it "
                             "trains at --lr_find_fallback: --lr_find_regression fallback, the default), so this does "
                             "nothing; add --lr_find_regression plain to test anyway, or drop it")
        if regression and self.head_bias_init:
            raise UsageError("--head_bias_init prior sets the head's bias to the class priors, but this task is a "
                             "regression (no classes): drop it")
        no_warmup = self.lr_scheduler_type in METRIC_SCHEDULERS
        if no_warmup and self.warmup_ratio:
            raise UsageError(f"--warmup_ratio {self.warmup_ratio}: --lr_scheduler_type {self.lr_scheduler_type} has no "
                             "warmup; drop --warmup_ratio (or choose a scheduler with one)")
        if no_warmup and not self.eval_every_epoch:
            raise UsageError(f"--lr_scheduler_type {self.lr_scheduler_type} lowers the LR when the dev metric stops "
                             "improving, which needs an evaluation after every epoch: drop --eval_every_epoch False")
        defaults = {"cache_max_gb": 4.0, "cache_dtype": "float16", **LR_FIND_DEFAULTS,
                    "torch_compile_backend": "inductor", "monitor_every": 50,
                    "warmup_ratio": 0.0 if no_warmup else 0.1}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        scheduler_kwargs(self.lr_scheduler_type, self.lr_scheduler_kwargs)  # checked now, before any work

    @property
    def scheduler_kwargs(self) -> dict[str, Any]:
        """``--lr_scheduler_kwargs`` as the scheduler takes them (see :func:`scheduler_kwargs`)."""
        return scheduler_kwargs(self.lr_scheduler_type, self.lr_scheduler_kwargs)

    @property
    def checkpoint_every(self) -> int | None:
        """``--checkpointing_steps`` as a number of steps (None for 'epoch' or unset)."""
        steps = self.checkpointing_steps
        return int(steps) if steps is not None and steps != "epoch" else None


METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")  # stepped with the dev metric after every evaluation


def scheduler_kwargs(name: str, text: str | None) -> dict[str, Any]:
    """``--lr_scheduler_kwargs`` checked against scheduler ``name``: a JSON object whose keys the scheduler takes,
    with the values it needs (tried on a throw-away optimizer). Metric-stepped schedulers (reduce_lr_on_plateau,
    greedy) get ``mode="max"`` unless given: the recipes step them with the task's main dev metric, where higher is
    better.

    Raises:
        UsageError: not JSON, a key the scheduler does not take (the keys it takes are listed), a scheduler that takes
            none, or values it refuses (its own message).
    """
    import inspect

    import torch
    from transformers import get_scheduler
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, GreedyLR

    flag = f"--lr_scheduler_kwargs {text!r}"
    try:
        given = {} if text is None else json.loads(text)
    except ValueError as err:
        raise UsageError(f"{flag}: not JSON ({err}); pass an object such as '{{\"num_cycles\": 2}}'") from None
    if not isinstance(given, dict):
        raise UsageError(f"{flag}: pass a JSON object such as '{{\"num_cycles\": 2}}'")
    target = {"reduce_lr_on_plateau": torch.optim.lr_scheduler.ReduceLROnPlateau.__init__,
              "greedy": GreedyLR.__init__}.get(name, TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)])
    skip = {"self", "optimizer", "num_warmup_steps", "num_training_steps", "last_epoch", "verbose"}
    takes = [p for p in inspect.signature(target).parameters if p not in skip]
    unknown = sorted(set(given) - set(takes))
    if unknown and not takes:
        raise UsageError(f"{flag}: --lr_scheduler_type {name} takes no arguments; drop --lr_scheduler_kwargs")
    if unknown:
        raise UsageError(f"{flag}: --lr_scheduler_type {name} does not take {', '.join(unknown)}; it takes "
                         f"{', '.join(takes)}")
    kwargs = {"mode": "max", **given} if name in METRIC_SCHEDULERS else given
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        get_scheduler(name, probe, num_warmup_steps=1, num_training_steps=10, scheduler_specific_kwargs=dict(kwargs))
    except (TypeError, ValueError, AssertionError) as err:
        raise UsageError(f"--lr_scheduler_type {name}: {one_line(err)}; pass its arguments with "
                         f"--lr_scheduler_kwargs (it takes {', '.join(takes)})") from None
    return kwargs


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


def parse_args(argv: Sequence[str] | None = None, range_tests: bool = False) -> RecipeArguments:
    """Parse and check the command line of a GLUE recipe.

    Example:
        >>> args = parse_args(["--task_name", "rte", "--model_name_or_path", "m", "--output_dir", "o",
        ...                    "--preset", "top3x5"])
        >>> args.layerwise.top_lr_multiplier, args.data.task_name
        (5.0, 'rte')

    ``range_tests``: the command runs LR range tests whatever ``--learning_rate`` says (recipes/lr_find.py), so the
    ``--lr_find_*`` options apply.

    Raises:
        UsageError: an unknown option, a value of the wrong type or out of range, an option that does nothing with
            the others, or an impossible layer-wise config; the message names the option.
    """
    parser = _Parser((ModelArguments, DataArguments, TrainArguments, LayerwiseArguments), allow_abbrev=False)
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
    from .data import get_task

    auto = train.learning_rate == "auto" or auto_top or range_tests  # range_tests: recipes/lr_find.py
    train.resolve(regression=get_task(data.task_name).is_regression, auto=auto,
                  cache_frozen=cfg.cache_frozen, range_tests=range_tests, scan=auto_top)
    if cfg.loraplus_ratio is not None and model.lora_r is None:
        raise UsageError(f"--loraplus_ratio {cfg.loraplus_ratio} speeds up LoRA's B matrices, and there are none "
                         "without --lora_r: add --lora_r R, or drop --loraplus_ratio")
    if model.lora_r is not None and cfg.cache_frozen:
        raise UsageError("--cache_frozen with --lora_r: the frozen-feature cache replays the plain model's frozen "
                         "bottom, not an adapted one; drop one of them (LoRA already trains few parameters)")
    if (train.learning_rate == "auto" or auto_top) and cfg.unfreeze_every:
        raise UsageError("--learning_rate/--top_lr_multiplier auto with gradual unfreezing: the range test would see "
                         "only the head training; pass numbers, or drop --unfreeze_every")
    return RecipeArguments(model, data, train, lw, cfg, auto_top_multiplier=auto_top)


def _number_or_auto(value: str) -> float | str:
    return "auto" if value.strip().lower() == "auto" else float(value)


_number_or_auto.__name__ = "number (or auto)"  # argparse: "invalid number (or auto) value: 'x'"
