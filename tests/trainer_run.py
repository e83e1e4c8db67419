"""Train a tiny BERT with LayerwiseTrainer; used by the tests in fresh processes (resume, DDP).

    python tests/trainer_run.py OUT --max-steps 12 [--stop-at 6] [--resume] [--batch 8] [--unfreeze-every 2]
    torchrun --nproc_per_node 2 tests/trainer_run.py OUT --batch 4 ...
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from conftest import tiny_model  # noqa: E402
from transformers import TrainerCallback, TrainingArguments  # noqa: E402

from hf_layerwise import LayerwiseCallback, LayerwiseConfig, LayerwiseTrainer  # noqa: E402


class RandomPairs(torch.utils.data.Dataset):
    """Fixed random token sequences with a learnable label (first token parity)."""

    def __init__(self, n: int = 48, length: int = 12, vocab: int = 96, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, vocab, (n, length), generator=g)
        self.labels = (self.ids[:, 1] % 2).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--stop-at", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--unfreeze-every", type=int, default=0)
    p.add_argument("--freeze-below", type=int, default=0)
    p.add_argument("--no-dropout", action="store_true")
    a = p.parse_args()

    drop = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0) if a.no_dropout else {}
    model = tiny_model("bert", **drop)
    cfg = LayerwiseConfig(top_k=1, top_lr_multiplier=5.0, freeze_below=a.freeze_below,
                          unfreeze_every=a.unfreeze_every, unfreeze_unit="steps", layer_decay=0.9)
    args = TrainingArguments(
        output_dir=a.out, max_steps=a.max_steps, per_device_train_batch_size=a.batch, learning_rate=1e-3,
        warmup_steps=0.2, lr_scheduler_type="linear", logging_steps=1, save_strategy="steps" if a.save_steps else "no",
        save_steps=a.save_steps or 500, report_to=[], use_cpu=True, seed=7, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    callbacks = [LayerwiseCallback(cfg)] + ([StopAt(a.stop_at)] if a.stop_at else [])
    trainer = LayerwiseTrainer(model=model, args=args, train_dataset=RandomPairs(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=True if a.resume else None)
    rank = int(os.environ.get("RANK", 0))
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    torch.save({"params": state, "log": trainer.state.log_history}, os.path.join(a.out, f"final_rank{rank}.pt"))
    trainer.accelerator.wait_for_everyone()  # as recipes/glue_trainer.py: both ranks end the process group together
    trainer.accelerator.end_training()  # left to interpreter exit, gloo's threads can abort a rank (SIGABRT)


if __name__ == "__main__":
    main()
