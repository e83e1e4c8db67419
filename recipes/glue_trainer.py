"""The GLUE recipe through ``transformers.Trainer`` — the drop-in path: LayerwiseTrainer + LayerwiseCallback.

    python recipes/glue_trainer.py --task_name rte --model_name_or_path MODEL --data_dir ../shared/glue \
        --preset top3x5 --output_dir runs/rte_trainer
    # several CPU processes:  python -m torch.distributed.run --nproc_per_node 2 recipes/glue_trainer.py --cpu ...

Same arguments, checks, data, model set-up and results.json keys as recipes/glue.py (the shared steps are in
``hf_layerwise.glue.recipe``); the training loop is the Trainer's. Every shared flag is supported:
``--monitor`` adds ``HealthCallback``, ``--eval_every_epoch False`` evaluates only at the end,
``--checkpointing_steps`` maps to ``save_strategy``/``save_steps``. Early stopping keeps the best checkpoint of
each epoch, so it refuses ``--checkpointing_steps N``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import numpy as np
import torch
import transformers
from transformers import DataCollatorWithPadding, EarlyStoppingCallback, TrainerCallback, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_layerwise import (HealthCallback, HealthConfig, LayerwiseCallback, LayerwiseTrainer,  # noqa: E402
                          discover_layers)
from hf_layerwise.errors import UsageError, run_cli, usage_errors  # noqa: E402
from hf_layerwise.feature_cache import CACHE_ROW, FrozenFeatureCache, add_cache_rows  # noqa: E402
from hf_layerwise.glue import GlueTask, get_task, load_metric  # noqa: E402
from hf_layerwise.glue.arguments import METRIC_SCHEDULERS, RecipeArguments, parse_args  # noqa: E402
from hf_layerwise.glue.auto_lr import (LR_FIND_JSON, LRChoice, choose_learning_rate,  # noqa: E402
                                       label_mean_offset, wants_search, write_lr_find)
from hf_layerwise.glue.features import predictions, tokenize_glue  # noqa: E402
from hf_layerwise.glue.recipe import (check_environment, check_resume, dataloader_workers,  # noqa: E402
                                      feature_cache, host_record, load_data, load_model, load_tokenizer,
                                      loss_class_weights, model_config, open_output_dir, pad_multiple,
                                      results_record, run_files, save_final_model, warn_idle_checkpointing)
from hf_layerwise.glue.run_dir import RUN_CONFIG, claim_output_dir, stop_with_sweep, write_json_atomic  # noqa: E402
from hf_layerwise.monitor import NonFiniteError, check_finite_parameters  # noqa: E402

ELAPSED = "recipe_progress.json"  # training time and resumes before this checkpoint (the Trainer keeps neither)


class GlueTrainer(LayerwiseTrainer):
    """LayerwiseTrainer that stops on a non-finite loss (the Trainer would log the running average instead and go
    on) and, with ``--class_weights auto``, trains with class-weighted cross-entropy."""

    loss_weights: torch.Tensor | None = None
    feature_cache: FrozenFeatureCache | None = None  # --cache_frozen: every forward starts from the cached states

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.feature_cache is not None:
            with self.feature_cache.use(inputs) as model_inputs:
                return self._loss(model, model_inputs, return_outputs, num_items_in_batch)
        return self._loss(model, inputs, return_outputs, num_items_in_batch)

    def _loss(self, model, inputs, return_outputs, num_items_in_batch):
        if self.loss_weights is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=self.loss_weights.to(labels.device))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss)):
            raise NonFiniteError(
                f"step {self.state.global_step + 1}: the training loss {loss.item()} is not finite; the run stops "
                "before the update, without writing a checkpoint or results (the last checkpoint, if any, is "
                "intact). Likely cause: a too high --learning_rate, clipping off (--max_grad_norm 0), or invalid "
                "labels")
        return loss


class RecipeCheckpoints(TrainerCallback):
    """Never saves non-finite weights; writes into every checkpoint the run's settings (checked on resume), its
    training time so far, and the loss summed since the last log, which a resumed run restores so that its first
    logged loss averages the same steps as the uninterrupted run's (the Trainer itself restarts that sum at zero)."""

    def __init__(self, settings: dict[str, Any], elapsed: Any, earlier: dict[str, Any]) -> None:
        self.settings, self.elapsed, self.earlier = settings, elapsed, earlier
        self.trainer: GlueTrainer | None = None  # set once the Trainer exists
        self.checkpoint_time_s = earlier.get("checkpoint_time_s", 0.0)
        self._save_started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        pending = self.earlier.get("loss_sums")
        if pending and hasattr(self.trainer, "_tr_loss") and hasattr(self.trainer, "_globalstep_last_logged"):
            self.trainer._tr_loss.fill_(pending[args.process_index])
            self.trainer._globalstep_last_logged = self.earlier["last_logged"]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if control.should_save and model is not None:
            self._save_started = time.perf_counter()
            check_finite_parameters(model, state.global_step)

    on_epoch_end = on_step_end  # save_strategy "epoch" decides to save here

    def on_save(self, args, state, control, **kwargs):
        if self._save_started is not None:
            self.checkpoint_time_s += time.perf_counter() - self._save_started
            self._save_started = None
        record = {"train_time_s": self.elapsed(), "checkpoint_time_s": self.checkpoint_time_s,
                  "resumed_from": self.earlier["resumed_from"]}
        if hasattr(self.trainer, "_tr_loss") and hasattr(self.trainer, "_globalstep_last_logged"):
            sums = self.trainer.accelerator.gather(self.trainer._tr_loss.detach().reshape(1))  # every process's
            record.update(loss_sums=sums.tolist(), last_logged=self.trainer._globalstep_last_logged)
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            write_json_atomic(os.path.join(folder, RUN_CONFIG), self.settings)
            write_json_atomic(os.path.join(folder, ELAPSED), record)


def main(argv: list[str] | None = None) -> dict:
    # -- set-up: every argument and input is checked before anything is written ------------------------------------
    args = parse_args(argv)
    stop_with_sweep()  # started by recipes/ablate.py: end with it
    task = get_task(args.data.task_name)
    check_environment(args, cuda=torch.cuda.is_available() and not args.train.cpu)
    if args.train.early_stopping_patience is not None and args.train.checkpoint_every:
        raise UsageError("--early_stopping_patience in the Trainer recipe keeps the best model through a checkpoint "
                         "after every evaluation (every epoch): use --checkpointing_steps epoch or leave it unset")
    checkpoint, settings, seen = open_output_dir(args, kind="trainer")
    files = run_files(args, "trainer")  # what this run writes: listed before `auto` turns into the LR it picks
    config = model_config(args)

    # -- data and model ------------------------------------------------------------------------------------------------
    raw = load_data(args)
    check_resume(checkpoint, settings, raw)  # a checkpoint is continued only with its settings and data
    tokenizer = load_tokenizer(args, config)
    transformers.set_seed(args.train.seed)
    model = load_model(args, config, raw["train"]["label"], tokenizer.pad_token_id)
    num_layers = discover_layers(model).num_layers
    with usage_errors("layer-wise options"):  # before the Trainer, which creates the output folder
        args.layerwise.validate_for(num_layers)
    tokenized = tokenize_glue(raw, tokenizer, task, args.data.max_seq_length, args.data.pad_to_max_length)
    if args.layerwise.cache_frozen:  # every example gets its row in the frozen-feature cache
        tokenized.update(add_cache_rows({s: tokenized[s] for s in ("train", *task.eval_splits)}))

    # -- --learning_rate auto / --top_lr_multiplier auto: the LR range tests (everything restored after them) -------
    lr_choice = search_learning_rate(args, model, tokenizer, tokenized, loss_class_weights(args, raw), checkpoint,
                                     label_mean_offset(args, raw["train"]["label"]))

    # -- trainer (layer-wise optimizer through LayerwiseTrainer), resume, train -------------------------------------
    earlier = _earlier_segments(checkpoint)
    start = time.perf_counter()
    trainer, metric, checkpoints = make_trainer(args, task, model, tokenizer, tokenized, loss_class_weights(args, raw),
                                                settings, earlier=earlier,
                                                elapsed=lambda: earlier["train_time_s"] + time.perf_counter() - start)
    train = args.train
    batches = math.ceil(raw["train"].num_rows / (train.per_device_train_batch_size * trainer.args.world_size))
    per_epoch = max(1, math.ceil(batches / train.gradient_accumulation_steps))
    warn_idle_checkpointing(args, train.max_train_steps or math.ceil(train.num_train_epochs * per_epoch))
    # every input checked: the folder is this run's; a run it replaces comes back if this one fails before a checkpoint
    with claim_output_dir(train.output_dir, files, seen, overwrite=train.overwrite_output_dir,
                          resume=checkpoint is not None, program="recipes/glue_trainer.py",
                          is_main_process=trainer.is_world_process_zero()) as folder:
        if lr_choice is not None and trainer.is_world_process_zero():
            write_lr_find(args.train.output_dir, lr_choice)
        cpu_start = time.process_time()
        segment = time.perf_counter()
        build_cache(trainer, tokenized, task)  # --cache_frozen: one pass through the frozen bottom, inside the timing
        trainer.train(resume_from_checkpoint=checkpoint)
        train_time = earlier["train_time_s"] + time.perf_counter() - start
        host = host_record(time.process_time() - cpu_start, time.perf_counter() - segment)
        eval_time = sum(h.get("eval_runtime", 0.0) for h in trainer.state.log_history)  # evaluations while training

        # -- results first, then the model ---------------------------------------------------------------------------
        metrics = {}
        for split in task.eval_splits:  # the final model (the best one with early stopping: load_best_model_at_end)
            result = trainer.evaluate(tokenized[split].remove_columns("idx"), metric_key_prefix="eval")
            metrics.update(_metrics(result, "_mm" if split == "validation_mismatched" else ""))
        results = results_record(
            args, raw, metric, metrics=metrics, history=_history(trainer.state.log_history),
            log_history=[h for h in trainer.state.log_history if "loss" in h], num_processes=trainer.args.world_size,
            completed_steps=trainer.state.global_step, train_time_s=train_time, eval_time_s=eval_time,
            checkpoint_time_s=checkpoints.checkpoint_time_s,
            trained_samples=round(raw["train"].num_rows * float(trainer.state.epoch or 0)),
            trainable_params=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            num_layers=num_layers,
            resumed_from=earlier["resumed_from"],
            feature_cache=None if trainer.feature_cache is None else trainer.feature_cache.stats(),
            lr_find=None if lr_choice is None else lr_choice.record(), host=host)
        if trainer.is_world_process_zero():
            write_json_atomic(os.path.join(args.train.output_dir, "results.json"), results)
            print(f"results: {metrics} -> {os.path.join(args.train.output_dir, 'results.json')}")
        folder.commit()
        if trainer.feature_cache is not None:
            trainer.feature_cache.close()  # the model computes its frozen blocks again (for --save_model)
        if args.train.save_model:
            target = os.path.join(args.train.output_dir, "model")

            def save() -> None:
                check_finite_parameters(trainer.model, trainer.state.global_step)
                trainer.save_model(target)

            save_final_model(save, target)
        trainer.accelerator.wait_for_everyone()  # no rank tears gloo down while another is still in a collective
        trainer.accelerator.end_training()  # the Trainer leaves the process group open; gloo can abort a rank at exit
    return results


def search_learning_rate(args: RecipeArguments, model: torch.nn.Module, tokenizer: Any, tokenized: Any,
                         loss_weights: torch.Tensor | None, checkpoint: str | None,
                         label_offset: float | None = None) -> LRChoice | None:
    """``auto``: the range tests before the Trainer exists, on the model frozen as configured, with a temporary
    layer-wise AdamW and the training set in a seeded shuffle (batches of --per_device_train_batch_size, fp32); the
    model and every RNG stream are restored after them. The choice replaces the provisional LR and multiplier in
    ``args``. One process only: several would each test alone (recipes/glue.py and recipes/lr_find.py test on N)."""
    if not wants_search(args):
        return None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("--learning_rate/--top_lr_multiplier auto in the Trainer recipe runs on one process: run "
                         "recipes/lr_find.py with the same launch (it tests on every process) and pass its numbers, "
                         "or use recipes/glue.py --learning_rate auto")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.train.cpu else "cpu")
    model.to(device)
    columns = [c for c in ("idx", CACHE_ROW) if c in tokenized["train"].column_names]
    loader = torch.utils.data.DataLoader(
        tokenized["train"].remove_columns(columns), batch_size=args.train.per_device_train_batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(args.train.seed),
        collate_fn=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(args)))
    weights = None if loss_weights is None else loss_weights.to(device)

    def loss_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in batch.items()}
        if weights is None:
            return m(**batch).loss
        labels = batch.pop("labels")
        return torch.nn.functional.cross_entropy(m(**batch).logits, labels, weight=weights)

    choice = choose_learning_rate(args, model, loader, discover_layers(model), loss_fn=loss_fn,
                                  resume_from=os.path.join(args.train.output_dir, LR_FIND_JSON) if checkpoint else None,
                                  label_offset=label_offset)
    args.train.learning_rate, args.layerwise = choice.learning_rate, choice.layerwise
    print(f"learning rate {choice.learning_rate:.3g}, top-{choice.layerwise.top_k} multiplier "
          f"{choice.layerwise.top_lr_multiplier:.3g} ({choice.source})")
    return choice


def make_trainer(args: RecipeArguments, task: GlueTask, model: torch.nn.Module, tokenizer: Any, tokenized: Any,
                 loss_weights: torch.Tensor | None, settings: dict[str, Any], elapsed: Any,
                 earlier: dict[str, Any]) -> tuple[GlueTrainer, Any, RecipeCheckpoints]:
    """TrainingArguments from the recipe's arguments, the layer-wise and recipe callbacks, the Trainer."""
    train = args.train
    early = train.early_stopping_patience is not None
    eval_strategy = "epoch" if train.eval_every_epoch else "no"
    save_strategy = "epoch" if train.checkpointing_steps == "epoch" or early else (
        "steps" if train.checkpoint_every else "no")
    main_split = task.eval_splits[0]
    cuda = torch.cuda.is_available() and not train.cpu
    workers, pin = dataloader_workers(args, cuda)
    best_metric = task.main_metric if len(task.eval_splits) == 1 else f"{main_split}_{task.main_metric}"
    metric_scheduler = train.lr_scheduler_type in METRIC_SCHEDULERS  # stepped with the main dev metric
    with usage_errors("TrainingArguments"):
        training_args = TrainingArguments(
            output_dir=train.output_dir, per_device_train_batch_size=train.per_device_train_batch_size,
            per_device_eval_batch_size=train.per_device_eval_batch_size, learning_rate=train.learning_rate,
            num_train_epochs=train.num_train_epochs, max_steps=train.max_train_steps or -1,
            warmup_steps=train.warmup_ratio, lr_scheduler_type=train.lr_scheduler_type,
            lr_scheduler_kwargs=train.scheduler_kwargs,
            gradient_accumulation_steps=train.gradient_accumulation_steps, seed=train.seed, use_cpu=not cuda,
            bf16=train.mixed_precision == "bf16", fp16=train.mixed_precision == "fp16",
            logging_steps=train.logging_steps, eval_strategy=eval_strategy, save_strategy=save_strategy,
            save_steps=train.checkpoint_every or 500, report_to=[] if train.report_to == "none" else [train.report_to],
            load_best_model_at_end=early, greater_is_better=True if early or metric_scheduler else None,
            metric_for_best_model=best_metric if early or metric_scheduler else None,  # also what the LR follows
            disable_tqdm=False, dataloader_num_workers=workers, dataloader_pin_memory=pin,
            dataloader_persistent_workers=workers > 0, optim="adamw_torch_fused" if cuda else "adamw_torch",
            torch_compile=train.torch_compile,  # a backend given to TrainingArguments turns compiling on by itself
            remove_unused_columns=not args.layerwise.cache_frozen,  # the cache's row numbers reach compute_loss
            **({"torch_compile_backend": train.torch_compile_backend} if train.torch_compile else {}),
        )
    checkpoints = RecipeCheckpoints(settings, elapsed, earlier)
    layerwise = LayerwiseCallback(args.layerwise)
    callbacks: list[TrainerCallback] = [layerwise, checkpoints]
    if train.monitor:
        callbacks.append(HealthCallback(HealthConfig(every_n_steps=train.monitor_every)))
    if early:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=train.early_stopping_patience))
    metric = load_metric(task.name, experiment_id=f"{os.getpid()}")

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return metric.compute(predictions=predictions(task, torch.as_tensor(logits)), references=prediction.label_ids)

    evals = {s: tokenized[s].remove_columns("idx") for s in task.eval_splits}
    pad = pad_multiple(args)
    with usage_errors("layer-wise options"):
        trainer = GlueTrainer(
            model=model, args=training_args, train_dataset=tokenized["train"].remove_columns("idx"),
            eval_dataset=evals[main_split] if len(evals) == 1 else evals, processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad),
            compute_metrics=compute_metrics, callbacks=callbacks,
        )
    trainer.loss_weights = loss_weights
    trainer.feature_cache = feature_cache(args, trainer.model, layerwise.layers,  # the model is frozen by now
                                          trainer.accelerator.distributed_type)
    checkpoints.trainer = trainer
    return trainer, metric, checkpoints


def build_cache(trainer: GlueTrainer, tokenized: Any, task: GlueTask) -> None:
    """``--cache_frozen``: every training and dev example once through the frozen bottom (eval mode, each process its
    share); a resumed run builds it again (the same states: the frozen weights have not changed)."""
    if trainer.feature_cache is None:
        return
    trainer.feature_cache.build([tokenized[s] for s in ("train", *task.eval_splits)], collate_fn=trainer.data_collator,
                                batch_size=trainer.args.per_device_eval_batch_size,
                                autocast=trainer.accelerator.autocast)


def _earlier_segments(checkpoint: str | None) -> dict[str, Any]:
    """What the checkpoint a run resumes from recorded (training time, resumes, pending loss sums; nothing for a new
    run); ``resumed_from`` includes that checkpoint."""
    earlier: dict[str, Any] = {"train_time_s": 0.0, "resumed_from": []}
    path = os.path.join(checkpoint, ELAPSED) if checkpoint else None
    if path is not None and os.path.isfile(path):
        with open(path) as f:
            earlier.update(json.load(f))
    if checkpoint:
        earlier["resumed_from"] = [*earlier["resumed_from"], checkpoint]
    return earlier


_METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")


def _metrics(result: dict[str, float], suffix: str = "") -> dict[str, float]:
    """``eval_accuracy`` -> ``accuracy`` (+ ``suffix``); ``eval_validation_mismatched_accuracy`` -> ``accuracy_mm``."""
    out = {}
    for key, value in result.items():
        name, tail = key.removeprefix("eval_"), suffix
        for split in ("validation_mismatched_", "validation_matched_", "validation_"):
            if name.startswith(split):
                name, tail = name[len(split):], "_mm" if split == "validation_mismatched_" else ""
                break
        if name in _METRICS:
            out[f"{name}{tail}"] = value
    return out


def _history(log_history: list[dict]) -> list[dict]:
    """The Trainer's evaluation logs in glue.py's history shape: one entry per evaluation (epoch, step, metrics)."""
    history: dict[int, dict] = {}
    for entry in log_history:
        found = _metrics({k: v for k, v in entry.items() if k.startswith("eval_")})
        if found:
            history.setdefault(entry["step"], {"epoch": round(entry.get("epoch", 0)), "step": entry["step"]}
                               ).update(found)
    return list(history.values())


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(run_cli(main))
