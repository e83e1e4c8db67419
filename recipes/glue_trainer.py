"""The GLUE recipe through ``transformers.Trainer`` — the drop-in path: LayerwiseTrainer + LayerwiseCallback.

    python recipes/glue_trainer.py --task_name rte --model_name_or_path MODEL --data_dir ../shared/glue \
        --preset top3x5 --output_dir runs/rte_trainer
    # several CPU processes:  python -m torch.distributed.run --nproc_per_node 2 recipes/glue_trainer.py --cpu ...

Same arguments, data and results.json as recipes/glue.py; the training loop is the Trainer's.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
import transformers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          EarlyStoppingCallback, TrainingArguments)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glue_args import parse_args  # noqa: E402

import hf_layerwise  # noqa: E402
from hf_layerwise import LayerwiseCallback, LayerwiseTrainer  # noqa: E402
from hf_layerwise.glue import get_task, load_glue, load_metric  # noqa: E402
from hf_layerwise.glue.training import (class_weights, init_head_bias_prior, majority_metrics,  # noqa: E402
                                        predictions, reinit_top_layers, tokenize_glue, write_json_atomic)


class WeightedLossTrainer(LayerwiseTrainer):
    """LayerwiseTrainer with class-weighted cross-entropy (``--class_weights auto``)."""

    loss_weights: torch.Tensor

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=self.loss_weights.to(labels.device))
        return (loss, outputs) if return_outputs else loss


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args, lw_args, cfg = parse_args(argv)
    task = get_task(data_args.task_name)
    transformers.set_seed(args.seed)

    raw = load_glue(task.name, data_args.data_dir, data_args.train_file, data_args.validation_file)
    if data_args.max_train_samples:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_samples, raw["train"].num_rows)))
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    tokenized = tokenize_glue(raw, tokenizer, task, data_args.max_seq_length, data_args.pad_to_max_length)

    label_kwargs = {} if task.is_regression else {"id2label": dict(enumerate(task.label_names)),
                                                   "label2id": {n: i for i, n in enumerate(task.label_names)}}
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, num_labels=task.num_labels, **label_kwargs,
        problem_type="regression" if task.is_regression else "single_label_classification")
    train_labels = raw["train"]["label"]
    reinit_top_layers(model, args.reinit_top_layers)
    if args.head_bias_init == "prior" and not task.is_regression:
        init_head_bias_prior(model, train_labels, task.num_labels)

    metric = load_metric(task.name, experiment_id=f"{os.getpid()}")

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return metric.compute(predictions=predictions(task, torch.as_tensor(logits)), references=prediction.label_ids)

    every = args.checkpointing_steps
    training_args = TrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size, learning_rate=args.learning_rate,
        num_train_epochs=args.num_train_epochs, max_steps=args.max_train_steps or -1,
        warmup_steps=args.warmup_ratio, lr_scheduler_type=args.lr_scheduler_type,
        gradient_accumulation_steps=args.gradient_accumulation_steps, seed=args.seed, use_cpu=args.cpu,
        bf16=args.mixed_precision == "bf16", fp16=args.mixed_precision == "fp16", logging_steps=args.logging_steps,
        eval_strategy="epoch", save_strategy="epoch" if every == "epoch" else ("steps" if every else "no"),
        save_steps=int(every) if every and every.isdigit() else 500,
        report_to=[] if args.report_to == "none" else [args.report_to],
        load_best_model_at_end=args.early_stopping_patience is not None,
        metric_for_best_model=task.main_metric if args.early_stopping_patience is not None else None,
        disable_tqdm=False,
    )
    if args.early_stopping_patience is not None and training_args.save_strategy == "no":
        training_args.save_strategy = "epoch"
    callbacks = [LayerwiseCallback(cfg)]
    if args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=args.early_stopping_patience))
    trainer_cls = WeightedLossTrainer if args.class_weights == "auto" else LayerwiseTrainer
    if args.class_weights == "auto":
        WeightedLossTrainer.loss_weights = class_weights(train_labels, task.num_labels)
    trainer = trainer_cls(
        model=model, args=training_args, train_dataset=tokenized["train"].remove_columns("idx"),
        eval_dataset={s: tokenized[s].remove_columns("idx") for s in task.eval_splits},
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics, callbacks=callbacks,
    )
    resume = args.resume_from_checkpoint
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume == "latest" else resume)
    train_time = time.perf_counter() - start

    metrics = {}
    for split in task.eval_splits:
        result = trainer.evaluate(tokenized[split].remove_columns("idx"), metric_key_prefix="eval")
        suffix = "_mm" if split == "validation_mismatched" else ""
        metrics.update({f"{k[len('eval_'):]}{suffix}": v for k, v in result.items()
                        if k[len("eval_"):] in ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")})
    results = {
        "task": task.name, "metrics": metrics, "main_metric": task.main_metric,
        "majority_baseline": majority_metrics(task, train_labels, raw[task.eval_splits[0]]["label"], metric),
        "num_train_examples": len(tokenized["train"]),
        "num_eval_examples": {s: len(raw[s]) for s in task.eval_splits}, "seed": args.seed,
        "num_processes": training_args.world_size,
        "global_batch_size": args.per_device_train_batch_size * training_args.world_size
        * args.gradient_accumulation_steps,
        "completed_steps": trainer.state.global_step, "train_time_s": round(train_time, 2),
        "train_samples_per_second": round(len(tokenized["train"]) * float(trainer.state.epoch or 0) / train_time, 2),
        "layerwise": cfg.to_dict(),
        "config": {"model": vars(model_args), "data": vars(data_args), "train": vars(args),
                   "layerwise_args": vars(lw_args)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "hf_layerwise": hf_layerwise.__version__},
        "log_history": trainer.state.log_history,
    }
    if args.save_model:
        trainer.save_model(os.path.join(args.output_dir, "model"))
    if trainer.is_world_process_zero():
        write_json_atomic(os.path.join(args.output_dir, "results.json"), results)
        print(f"results: {metrics} -> {os.path.join(args.output_dir, 'results.json')}")
    trainer.accelerator.end_training()  # the Trainer leaves the process group open; gloo can abort a rank at exit
    return results


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
