"""Per-step overhead of the Trainer integration: LayerwiseTrainer + LayerwiseCallback vs a plain Trainer.

    python bench/plugin_overhead.py [--steps 300] [--rounds 3]

A deliberately tiny BERT (2 blocks, hidden 64) so a step takes milliseconds and any Python overhead of the
callback would show. Both use the same two AdamW groups (preset baseline) and log every 50 steps; they
alternate A B A B ... in one process and the medians of the mean steady-state step time (time between step
ends, after 10 warm-up steps; setup excluded) are compared.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import transformers as T

from hf_layerwise import LayerwiseCallback, LayerwiseConfig, LayerwiseTrainer


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int, length: int = 32):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 500, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": int(self.ids[i, 1] % 2)}


class StepClock(T.TrainerCallback):
    """Time between consecutive step ends: the steady-state step time, without setup."""

    def __init__(self):
        self.stamps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.stamps.append(time.perf_counter())


TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)


def run(layerwise: bool, steps: int, config: dict | None = None, cuda: bool = False, bf16: bool = False,
        batch: int = 8) -> float:
    """Mean steady-state seconds per step of a Trainer (``layerwise=False``) or LayerwiseTrainer on a random BERT
    (``config``: BertConfig fields; default the tiny one)."""
    torch.manual_seed(0)
    model = T.BertForSequenceClassification(T.BertConfig(**(config or TINY)))
    args = T.TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=batch,
                               logging_steps=50, save_strategy="no", report_to=[], use_cpu=not cuda, bf16=bf16,
                               disable_tqdm=True, weight_decay=0.01, log_level="error")
    if layerwise:
        trainer = LayerwiseTrainer(model=model, args=args, train_dataset=Pairs(steps * batch),
                                   callbacks=[LayerwiseCallback(LayerwiseConfig.preset("baseline"))])
    else:
        trainer = T.Trainer(model=model, args=args, train_dataset=Pairs(steps * batch))
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    gaps = [b - a for a, b in zip(clock.stamps[10:], clock.stamps[11:])]
    return sum(gaps) / len(gaps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(True, 20), run(False, 20)  # warm-up
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(run(False, args.steps))
        ours.append(run(True, args.steps))
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"tiny BERT, {args.steps} steps x {args.rounds} rounds, 1 thread")
    print(f"plain Trainer: {1000 * p:.2f} ms/step; LayerwiseTrainer + LayerwiseCallback: {1000 * o:.2f} ms/step; "
          f"ratio {o / p:.3f}")
    print(f"per-round ms/step plain {[round(1000 * x, 2) for x in plain]}, layerwise {[round(1000 * x, 2) for x in ours]}")


if __name__ == "__main__":
    main()
