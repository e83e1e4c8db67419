"""The set-up both GLUE recipes share (``recipes/glue.py`` through accelerate, ``recipes/glue_trainer.py`` through the
Trainer): the model checked before it is loaded, the data with its sample limits, the model with its label maps and
head options, the settings a checkpoint must be resumed with, and the keys of ``results.json``.

Every check here runs before training and raises :class:`~hf_layerwise.errors.UsageError` with a message that names
the argument and says how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import subprocess
from collections import Counter
from typing import Any

import logging

import datasets
import torch
from torch import nn

from ..adapters import add_lora
from ..errors import RunFailed, UsageError, one_line, usage_errors
from ..feature_cache import FrozenFeatureCache
from ..layers import LayerMap, discover_layers
from ..report import REPORT_FILES
from .arguments import RecipeArguments
from .data import GlueTask, get_task, load_glue
from .heads import class_weights, init_head_bias_prior, reinit_top_layers
from .run_dir import (CACHE_DIR, FolderState, RunFiles, check_output_dir, check_same_settings, load_run_config,
                      resolve_checkpoint)

__all__ = ["run_files", "open_output_dir", "check_resume", "data_fingerprint", "model_config", "max_positions",
           "load_data", "load_tokenizer", "load_model", "loss_class_weights", "pad_multiple", "dataloader_workers",
           "settings_fingerprint", "majority_metrics", "results_record", "host_record", "warn_idle_checkpointing",
           "save_final_model", "git_commit", "check_environment"]

logger = logging.getLogger("hf_layerwise.glue")

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


def run_files(args: RecipeArguments, kind: str) -> RunFiles:
    """What a GLUE recipe run with ``args`` writes at the top of its output folder, and which option writes it.

    ``kind`` is ``"accelerate"`` (recipes/glue.py) or ``"trainer"`` (recipes/glue_trainer.py)."""
    train = args.train
    names = {"results.json": "the run's results"}
    if train.learning_rate == "auto" or args.auto_top_multiplier:
        names.update(dict.fromkeys(("lr_find.json", "lr_find.png"), "--learning_rate/--top_lr_multiplier auto"))
    if train.monitor:
        names.update(dict.fromkeys(("health.jsonl", "health_tb"), "--monitor"))
        names.update(dict.fromkeys(REPORT_FILES, "python -m hf_layerwise report on a --monitor run"))
    if train.save_model:
        names["model"] = "--save_model writes the fine-tuned model there"
    if args.layerwise.cache_frozen:
        names[CACHE_DIR] = "--cache_frozen"
    if train.report_to != "none":
        names["glue" if kind == "accelerate" else "runs"] = f"--report_to {train.report_to} logs there"
    if kind == "accelerate":
        if train.early_stopping_patience is not None:
            names["best_model"] = "--early_stopping_patience keeps the best model there"
        prefixes = {"step_": "checkpoints", ".tmp-step_": "checkpoints being written"}
    else:
        prefixes = {"checkpoint-": "the Trainer's checkpoints"}
    return RunFiles(names, prefixes)


def open_output_dir(args: RecipeArguments, kind: str) -> tuple[str | None, dict[str, Any], FolderState]:
    """Check the output folder (not another run's unless resumed or overwritten, no file of the user's that the run
    would write over, writable) and the checkpoint to resume (every file complete; a checkpoint from another folder
    only into a folder without a run). Writes nothing: the recipe claims the folder
    (:func:`~hf_layerwise.glue.run_dir.claim_output_dir`) once every input is checked, and checks the checkpoint's
    settings once the data is loaded (:func:`check_resume`).

    ``kind`` is the checkpoint layout: ``"accelerate"`` (recipes/glue.py) or ``"trainer"``. Returns (checkpoint or
    None, this command's settings, as saved with every checkpoint, what the folder holds).
    """
    train = args.train
    seen = check_output_dir(train.output_dir, run_files(args, kind), overwrite=train.overwrite_output_dir,
                            resume=train.resume_from_checkpoint is not None)
    settings = settings_fingerprint(args, num_processes=int(os.environ.get("WORLD_SIZE", "1")))
    checkpoint = resolve_checkpoint(train.resume_from_checkpoint, train.output_dir, kind)
    if checkpoint is not None and seen.holds_run:
        inside = os.path.realpath(os.path.dirname(os.path.normpath(checkpoint))) == os.path.realpath(train.output_dir)
        if not inside:
            raise UsageError(f"--resume_from_checkpoint {checkpoint} continues the run of another folder, but "
                             f"--output_dir {train.output_dir} holds a run of its own ({seen.describe()}), which it "
                             "would write over: resume into the checkpoint's own folder, or into an empty "
                             "--output_dir")
    return checkpoint, settings, seen


def data_fingerprint(raw: datasets.DatasetDict) -> dict[str, str]:
    """Per split: the number of rows and a SHA-256 of every column (texts and labels), as it is trained and
    evaluated (after ``--max_train_samples``/``--max_eval_samples``). Part of the settings a resume must match: a
    checkpoint continued on edited data (fewer rows, flipped labels) is refused."""
    out = {}
    for split in sorted(raw):
        digest = hashlib.sha256()
        for column in sorted(raw[split].column_names):
            digest.update(column.encode())
            digest.update(json.dumps(list(raw[split][column]), default=str).encode())
        out[split] = f"{raw[split].num_rows} rows, sha256 {digest.hexdigest()[:16]}"
    return out


def check_resume(checkpoint: str | None, settings: dict[str, Any], raw: datasets.DatasetDict) -> None:
    """Add the data's fingerprint to ``settings`` and, when resuming, refuse a checkpoint trained with other settings
    or other data (every difference named)."""
    settings["data"] = data_fingerprint(raw)
    if checkpoint is not None:
        check_same_settings(load_run_config(checkpoint), settings, checkpoint)


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


def load_tokenizer(args: RecipeArguments, config: Any) -> Any:
    """The tokenizer (``--tokenizer_name`` or the model's), checked against the model: every token id it can produce
    must have a row in the model's embeddings (a larger vocabulary would fail at the first batch that uses one)."""
    from transformers import AutoTokenizer

    name = args.model.tokenizer_name or args.model.model_name_or_path
    flag = "--tokenizer_name" if args.model.tokenizer_name else "--model_name_or_path"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:
        raise UsageError(f"{flag} {name}: cannot load a tokenizer from it: {one_line(err)[:300]}") from None
    rows = getattr(config, "vocab_size", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise UsageError(f"{flag} {name}: its vocabulary has {len(tokenizer)} tokens but the embeddings of "
                         f"{args.model.model_name_or_path} have {rows} rows: token ids >= {rows} would fail; use the "
                         "model's own tokenizer (or one with at most that many tokens)")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # a decoder's tokenizer (Llama, GPT-2): pad with the end-of-sequence token, as transformers' run_glue does;
        # the classification head finds each example's last real token through the attention mask / pad id
        tokenizer.pad_token = tokenizer.eos_token
        logger.warning("the tokenizer has no padding token: padding with its end-of-sequence token %r (as "
                       "transformers' run_glue does for decoders)", tokenizer.eos_token)
    if tokenizer.pad_token is None:
        raise UsageError(f"{flag} {name}: the tokenizer has neither a padding nor an end-of-sequence token, and "
                         "batching needs one to pad with; use a tokenizer that has one")
    return tokenizer


def load_model(args: RecipeArguments, config: Any, train_labels: list, pad_token_id: int | None = None) -> nn.Module:
    """The sequence-classification model with the task's label maps and the head options of the arguments
    (``--reinit_top_layers``, ``--head_bias_init prior``); a model folder whose weights cannot be read is a
    ``UsageError`` naming it. A config without ``pad_token_id`` (GPT-2's) takes the tokenizer's ``pad_token_id``:
    a decoder's classification head finds each example's last token with it."""
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
    if getattr(model.config, "pad_token_id", None) is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
        logger.info("the model's config has no pad_token_id: using the tokenizer's (%d)", pad_token_id)
    n = args.train.reinit_top_layers
    if n:
        with usage_errors("layer-wise options"):
            num_layers = discover_layers(model).num_layers
            frozen = args.layerwise.frozen_below(num_layers)
        if n <= num_layers and num_layers - n + 1 <= frozen:
            raise UsageError(f"--reinit_top_layers {n} re-initialises blocks {num_layers - n + 1}..{num_layers}, but "
                             f"blocks up to {frozen} are frozen: they would stay random and never train; lower "
                             "--reinit_top_layers or the frozen part")
    with usage_errors("--reinit_top_layers"):
        reinit_top_layers(model, n)
    if args.train.head_bias_init == "prior" and not task.is_regression:
        with usage_errors("--head_bias_init prior"):
            init_head_bias_prior(model, train_labels, task.num_labels)
    return apply_lora(args, model)


def apply_lora(args: RecipeArguments, model: nn.Module) -> nn.Module:
    """``--lora_r``: the model wrapped by PEFT with LoRA adapters (the classification head trained whole, as PEFT's
    ``SEQ_CLS`` task does); ``model`` itself without the option."""
    m = args.model
    if m.lora_r is None:
        return model
    flag = "--lora_target_modules" if m.target_modules else "--lora_r (PEFT's default target modules)"
    try:
        model = add_lora(model, m.lora_r, m.lora_alpha, m.lora_dropout, m.target_modules)
    except ImportError as err:
        raise UsageError(f"--lora_r: {err}") from None
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from None
    logger.info("LoRA r=%d: %s trainable parameters", m.lora_r,
                f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
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


def host_record(cpu_s: float, wall_s: float) -> dict[str, Any]:
    """The conditions a run's time was measured under, for ``ablate.py report`` to tell comparable times apart: the
    machine's boot (``/proc/sys/kernel/random/boot_id``: a new machine or reboot gives a new one), its cores, torch's
    threads, and the CPU share of the last training segment: process CPU seconds / (wall seconds x threads), about 1
    when the run had its cores to itself and lower when other work took them (spin-waiting threads count as busy, so
    it stays a lower bound of the slowdown)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = None
    threads = torch.get_num_threads()
    return {"boot_id": boot, "cpu_count": os.cpu_count(), "torch_threads": threads, "cuda": torch.cuda.is_available(),
            "cpu_share": round(cpu_s / (wall_s * threads), 3) if wall_s > 0 else None}


def warn_idle_checkpointing(args: RecipeArguments, total_steps: int) -> None:
    """``--checkpointing_steps N`` with N beyond the run's last step writes no checkpoint: say so."""
    every = args.train.checkpoint_every
    if every and every > total_steps:
        logger.warning("--checkpointing_steps %d: the run has %d optimizer steps, so no checkpoint will be written "
                       "(use at most %d, or 'epoch')", every, total_steps, total_steps)


def save_final_model(save: Any, target: str) -> None:
    """``--save_model`` after results.json: a failure is a failed run (exit 1) whose results stay."""
    try:
        save()
    except Exception as err:  # OSError (disk full, read-only), a non-finite weight, a serialization error
        raise RunFailed(f"--save_model: could not save the model to {target} ({type(err).__name__}: "
                        f"{one_line(err)[:200]}); results.json was written before it") from None


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
                   trainable_params: int, num_layers: int, resumed_from: list[str],
                   feature_cache: dict[str, Any] | None = None,
                   lr_find: dict[str, Any] | None = None, host: dict[str, Any] | None = None) -> dict[str, Any]:
    """``results.json`` of either recipe: the same keys, whichever loop trained.

    ``metrics`` are the final (or, with early stopping, the best) dev metrics; ``history`` one entry per evaluation;
    ``log_history`` every logged training step (loss, per-depth LR and gradient norm). ``train_time_s`` is the wall
    time of the whole training loop, evaluations and checkpoints included (as in the committed study);
    ``train_samples_per_second`` counts the training steps only: evaluation and checkpoint time are taken out and
    reported as ``eval_time_s`` and ``checkpoint_time_s``. ``feature_cache`` describes the frozen-feature cache (its
    build time is part of ``train_time_s``); None without one. ``lr_find``: what ``--learning_rate auto`` /
    ``--top_lr_multiplier auto`` chose and the curves (its ``time_s`` is not part of ``train_time_s``); None without.
    ``host``: the conditions the time was measured under (:func:`host_record`). ``num_layers``: the encoder blocks
    the layer map found (depths 1..num_layers; 0 is the embeddings, num_layers + 1 the head).
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
        "host": host,
        "layerwise": args.layerwise.to_dict(),
        "trainable_params": trainable_params,
        "num_layers": num_layers,
        "feature_cache": feature_cache,
        "lr_find": lr_find,
        "config": {"model": vars(args.model), "data": vars(args.data), "train": vars(args.train),
                   "layerwise_args": vars(args.layerwise_args)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__, "datasets": datasets.__version__,
                     "hf_layerwise": __version__, "git_commit": git_commit()},
    }
