"""The set-up both GLUE recipes share (``recipes/glue.py`` through accelerate, ``recipes/glue_trainer.py`` through the
Trainer): the model checked before it is loaded, the data with its sample limits, the model with its label maps and
head options, the settings a checkpoint must be resumed with, and the keys of ``results.json``.

Every check here runs before training and raises :class:`~hf_layerwise.errors.UsageError` with a message that names
the argument and says how to fix it.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
from collections import Counter
from typing import Any

import datasets
import torch
from torch import nn

from ..errors import UsageError, one_line, usage_errors
from ..feature_cache import FrozenFeatureCache
from ..layers import LayerMap
from .arguments import RecipeArguments
from .data import GlueTask, get_task, load_glue
from .heads import class_weights, init_head_bias_prior, reinit_top_layers
from .run_dir import CACHE_DIR, check_output_dir, check_same_settings, load_run_config, resolve_checkpoint

__all__ = ["open_output_dir", "model_config", "max_positions", "load_data", "load_tokenizer", "load_model",
           "loss_class_weights", "pad_multiple", "dataloader_workers", "settings_fingerprint",
           "majority_metrics", "results_record", "git_commit", "check_environment"]

# Models whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids).
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "data2vec-text",
                          "roberta-prelayernorm", "ibert", "longformer"}


def check_environment(args: RecipeArguments, cuda: bool) -> None:
    """Arguments that depend on the machine: fp16 needs a GPU; a tracker must be installed."""
    train = args.train
    if train.mixed_precision == "fp16" and (train.cpu or not cuda):
        raise UsageError("--mixed_precision fp16 needs a CUDA GPU; on the CPU use --mixed_precision bf16 or no")
    if args.layerwise.cache_frozen and train.torch_compile:
        raise UsageError("--cache_frozen with --torch_compile: the cached forward swaps the frozen blocks' forward per "
                         "batch, which a compiled graph does not see; use one of them")
    trackers = {"all": ("tensorboard",), "none": ()}.get(train.report_to, (train.report_to,))
    for tracker in trackers:
        module = "torch.utils.tensorboard" if tracker == "tensorboard" else tracker
        try:
            __import__(module)
            if tracker == "tensorboard":
                __import__("tensorboard")
        except ImportError:
            extra = " (pip install 'hf-layerwise[monitor]')" if tracker == "tensorboard" else ""
            raise UsageError(f"--report_to {train.report_to}: {tracker} is not installed{extra}") from None


def open_output_dir(args: RecipeArguments, kind: str) -> tuple[str | None, dict[str, Any]]:
    """Check the output folder (not another run's unless resumed or overwritten, writable) and the checkpoint to
    resume: every file complete and the settings it was trained with the same as this command's. Writes nothing:
    the recipe claims the folder (:func:`~hf_layerwise.glue.run_dir.claim_output_dir`) once every input is checked.

    ``kind`` is the checkpoint layout: ``"accelerate"`` (recipes/glue.py) or ``"trainer"``. Returns (checkpoint or
    None, this command's settings, as saved with every checkpoint).
    """
    train = args.train
    check_output_dir(train.output_dir, overwrite=train.overwrite_output_dir,
                     resume=train.resume_from_checkpoint is not None)
    settings = settings_fingerprint(args, num_processes=int(os.environ.get("WORLD_SIZE", "1")))
    checkpoint = resolve_checkpoint(train.resume_from_checkpoint, train.output_dir, kind)
    if checkpoint is not None:
        check_same_settings(load_run_config(checkpoint), settings, checkpoint)
    return checkpoint, settings


def _is_local_path(path: str) -> bool:
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or os.path.exists(path)


def model_config(args: RecipeArguments) -> Any:
    """The model's config, loaded and checked before any weights: the folder exists and has a ``config.json``,
    ``--max_seq_length`` fits its positions, and a saved classification head fits the task (or
    ``--ignore_mismatched_sizes``).

    Raises:
        UsageError: naming ``--model_name_or_path`` / ``--max_seq_length`` and what to do instead.
    """
    from transformers import AutoConfig

    path, task = args.model.model_name_or_path, get_task(args.data.task_name)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise UsageError(f"--model_name_or_path {path}: the folder has no config.json; pass a Hugging Face model "
                         "folder (config.json and the weights, as written by save_pretrained)")
    if not os.path.isdir(path) and _is_local_path(path):
        raise UsageError(f"--model_name_or_path {path}: no such folder")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as err:  # OSError, ValueError, HFValidationError, connection errors
        offline = " (HF_HUB_OFFLINE is set: pass a local model folder)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise UsageError(f"--model_name_or_path {path}: cannot load its config{offline}: "
                         f"{one_line(err)[:300]}") from None
    limit = max_positions(config)
    if limit is not None and args.data.max_seq_length > limit:
        raise UsageError(f"--max_seq_length {args.data.max_seq_length} is longer than the {limit} positions of "
                         f"{path}: use at most {limit}")
    heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith("ForSequenceClassification")]
    if heads and config.num_labels != task.num_labels and not args.model.ignore_mismatched_sizes:
        raise UsageError(f"--model_name_or_path {path} has a {config.num_labels}-label classification head "
                         f"({heads[0]}) but {task.name} needs {task.num_labels}: pass --ignore_mismatched_sizes to "
                         "replace it with a new head (as run_glue does), or start from a model without a head")
    return config


def max_positions(config: Any) -> int | None:
    """The longest input the model's position embeddings allow (None when they set no limit)."""
    if getattr(config, "position_biased_input", True) is False:  # DeBERTa: relative positions only
        return None
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int):
        return None
    if config.model_type in _POSITION_OFFSET_TYPES:
        n -= (getattr(config, "pad_token_id", 0) or 0) + 1
    return n


def pad_multiple(args: RecipeArguments) -> int | None:
    """Padded lengths a multiple of this: 32 with ``--torch_compile`` (at most max_seq_length/32 shapes to compile),
    8 with mixed precision (tensor-core friendly), else none; ``--pad_to_multiple_of`` overrides."""
    if args.data.pad_to_multiple_of is not None:
        return args.data.pad_to_multiple_of
    return 32 if args.train.torch_compile else 8 if args.train.mixed_precision != "no" else None


def dataloader_workers(args: RecipeArguments, cuda: bool) -> tuple[int, bool]:
    """(worker processes per training process, pin_memory): batches prepared off the main thread on CUDA."""
    if args.train.dataloader_num_workers is not None:
        return args.train.dataloader_num_workers, cuda
    return (2, True) if cuda else (0, False)


def load_data(args: RecipeArguments) -> datasets.DatasetDict:
    """The task's splits with ``--max_train_samples`` / ``--max_eval_samples`` applied (the first N examples)."""
    task = get_task(args.data.task_name)
    raw = load_glue(task.name, args.data.data_dir, args.data.train_file, args.data.validation_file)
    limits = {"train": args.data.max_train_samples, **{s: args.data.max_eval_samples for s in task.eval_splits}}
    for split, limit in limits.items():
        if limit is not None and split in raw:
            raw[split] = raw[split].select(range(min(limit, raw[split].num_rows)))
    return raw


def load_tokenizer(args: RecipeArguments) -> Any:
    from transformers import AutoTokenizer

    name = args.model.tokenizer_name or args.model.model_name_or_path
    flag = "--tokenizer_name" if args.model.tokenizer_name else "--model_name_or_path"
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise UsageError(f"{flag} {name}: cannot load a tokenizer from it: {one_line(err)[:300]}") from None


def load_model(args: RecipeArguments, config: Any, train_labels: list) -> nn.Module:
    """The sequence-classification model with the task's label maps and the head options of the arguments
    (``--reinit_top_layers``, ``--head_bias_init prior``); a model folder whose weights cannot be read is a
    ``UsageError`` naming it."""
    from transformers import AutoModelForSequenceClassification

    task = get_task(args.data.task_name)
    label_kwargs = {} if task.is_regression else {"id2label": dict(enumerate(task.label_names)),
                                                   "label2id": {n: i for i, n in enumerate(task.label_names)}}
    path = args.model.model_name_or_path
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=task.num_labels, problem_type="regression" if task.is_regression
            else "single_label_classification", ignore_mismatched_sizes=args.model.ignore_mismatched_sizes,
            **label_kwargs)
    except Exception as err:  # missing or truncated weights, an architecture without a classification head
        raise UsageError(f"--model_name_or_path {path}: cannot load the model: {one_line(err)[:300]}") from None
    with usage_errors("--reinit_top_layers"):
        reinit_top_layers(model, args.train.reinit_top_layers)
    if args.train.head_bias_init == "prior" and not task.is_regression:
        with usage_errors("--head_bias_init prior"):
            init_head_bias_prior(model, train_labels, task.num_labels)
    return model


def loss_class_weights(args: RecipeArguments, raw: datasets.DatasetDict) -> torch.Tensor | None:
    """``--class_weights auto``: per-class weights of the cross-entropy (None without the option)."""
    if args.train.class_weights != "auto":
        return None
    with usage_errors("--class_weights auto"):
        return class_weights(raw["train"]["label"], get_task(args.data.task_name).num_labels)


_RESUMABLE = {  # may differ on resume: they do not change what is trained
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "logging_steps", "report_to", "save_model",
    "monitor", "monitor_every", "debug", "per_device_eval_batch_size", "checkpointing_steps", "cpu", "preset",
    "dataloader_num_workers", "cache_max_gb",
}


def _normalized(value: Any) -> Any:
    return os.path.abspath(value) if isinstance(value, str) and os.path.exists(value) else value


def settings_fingerprint(args: RecipeArguments, num_processes: int) -> dict[str, Any]:
    """The settings a checkpoint was trained with, keyed by option; a resume must use the same (compared by
    :func:`~hf_layerwise.glue.run_dir.check_same_settings`). Logging, checkpointing and output options may change."""
    settings: dict[str, Any] = {"num_processes": num_processes}
    for part in (args.model, args.data, args.train):
        for key, value in vars(part).items():
            if key not in _RESUMABLE:
                settings[f"--{key}"] = _normalized(value)
    for key, value in args.layerwise.to_dict().items():
        settings[f"layer-wise {key}"] = value
    if args.auto_top_multiplier:
        settings["layer-wise top_lr_multiplier"] = "auto"
    return settings


def majority_metrics(task: GlueTask, train_labels: list, eval_labels: list, metric: Any) -> dict[str, float]:
    """Dev metrics of always predicting the training set's majority class (Mosbach et al. 2021's failed-run
    threshold). For STS-B, a constant prediction has no correlation: 0."""
    if task.is_regression:
        return {"pearson": 0.0, "spearmanr": 0.0}
    majority = Counter(train_labels).most_common(1)[0][0]
    result = metric.compute(predictions=[majority] * len(eval_labels), references=eval_labels)
    return {k: (0.0 if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in result.items()}


def git_commit() -> str | None:
    """The commit of this checkout (provenance for results.json), or None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=here).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def peak_memory_mb() -> float:
    """CUDA peak allocated memory, or the process's max RSS on the CPU."""
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return round(peak / 2**20, 1)


def feature_cache(args: RecipeArguments, model: nn.Module, layers: LayerMap, distributed_type: str) -> (
        FrozenFeatureCache | None):
    """The frozen-feature cache ``--cache_frozen`` asks for (not built yet), or None. Refused under FSDP and DeepSpeed,
    whose sharded blocks the cache cannot replace."""
    if not args.layerwise.cache_frozen:
        return None
    if distributed_type in ("FSDP", "DEEPSPEED"):  # accelerate's DistributedType is a str enum
        raise UsageError(f"--cache_frozen under {distributed_type}: the frozen blocks are sharded there and the cache "
                         "cannot stand in for them; use DDP (or one process), or drop --cache_frozen")
    train = args.train
    with usage_errors("--cache_frozen"):
        return FrozenFeatureCache(model, cut=args.layerwise.frozen_below(layers.num_layers), layers=layers,
                                  dtype=train.cache_dtype, max_memory_gb=train.cache_max_gb,
                                  spill_dir=os.path.join(train.output_dir, CACHE_DIR))


def results_record(args: RecipeArguments, raw: datasets.DatasetDict, metric: Any, *, metrics: dict[str, float],
                   history: list[dict], log_history: list[dict], num_processes: int, completed_steps: int,
                   train_time_s: float, eval_time_s: float, checkpoint_time_s: float, trained_samples: int,
                   trainable_params: int, resumed_from: list[str],
                   feature_cache: dict[str, Any] | None = None,
                   lr_find: dict[str, Any] | None = None) -> dict[str, Any]:
    """``results.json`` of either recipe: the same keys, whichever loop trained.

    ``metrics`` are the final (or, with early stopping, the best) dev metrics; ``history`` one entry per evaluation;
    ``log_history`` every logged training step (loss, per-depth LR and gradient norm). ``train_time_s`` is the wall
    time of the whole training loop, evaluations and checkpoints included (as in the committed study);
    ``train_samples_per_second`` counts the training steps only: evaluation and checkpoint time are taken out and
    reported as ``eval_time_s`` and ``checkpoint_time_s``. ``feature_cache`` describes the frozen-feature cache (its
    build time is part of ``train_time_s``); None without one. ``lr_find``: what ``--learning_rate auto`` /
    ``--top_lr_multiplier auto`` chose and the curves (its ``time_s`` is not part of ``train_time_s``); None without.
    """
    import accelerate
    import transformers

    from .. import __version__

    task = get_task(args.data.task_name)
    train = args.train
    return {
        "task": task.name,
        "metrics": metrics,
        "main_metric": task.main_metric,
        "majority_baseline": majority_metrics(task, raw["train"]["label"], raw[task.eval_splits[0]]["label"], metric),
        "history": history,
        "log_history": log_history,
        "num_train_examples": raw["train"].num_rows,
        "num_eval_examples": {s: raw[s].num_rows for s in task.eval_splits},
        "seed": train.seed,
        "num_processes": num_processes,
        "global_batch_size": train.per_device_train_batch_size * num_processes * train.gradient_accumulation_steps,
        "completed_steps": completed_steps,
        "resumed_from": resumed_from,
        "train_time_s": round(train_time_s, 2),
        "eval_time_s": round(eval_time_s, 2),
        "checkpoint_time_s": round(checkpoint_time_s, 2),
        "train_samples_per_second": round(trained_samples / training, 2) if (
            training := train_time_s - eval_time_s - checkpoint_time_s) > 0 else None,
        "peak_memory_mb": peak_memory_mb(),
        "layerwise": args.layerwise.to_dict(),
        "trainable_params": trainable_params,
        "feature_cache": feature_cache,
        "lr_find": lr_find,
        "config": {"model": vars(args.model), "data": vars(args.data), "train": vars(args.train),
                   "layerwise_args": vars(args.layerwise_args)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__, "datasets": datasets.__version__,
                     "hf_layerwise": __version__, "git_commit": git_commit()},
    }
