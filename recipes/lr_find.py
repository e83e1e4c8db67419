"""LR range test for a GLUE task: the base learning rate, and the multiplier each group of depths can take.

    accelerate launch recipes/lr_find.py --task_name rte --model_name_or_path MODEL --data_dir ../shared/glue \
        --preset baseline --output_dir runs/rte_lr_find
    # then the multipliers at a base LR you chose, for the top 3 blocks, the head and every depth:
    accelerate launch recipes/lr_find.py ... --learning_rate 1e-4 --top_k 3 --scan top,head,depths

The same model, data and layer-wise flags as recipes/glue.py (with several processes, pass --cpu on a machine without
GPUs), and the same steps: set-up, data, model, layer-wise optimizer, ``accelerator.prepare``. Then, without training:
``--learning_rate auto`` (the default here) runs :func:`hf_layerwise.find_lr` (every group keeps its multiplier), and
each ``--scan`` target runs :func:`hf_layerwise.scan_multiplier` at that base LR: ``top`` (the top-k blocks), ``head``,
``depths`` (each trainable depth on its own). Writes OUTPUT_DIR/lr_find.json and lr_find.png and prints a table;
``python -m hf_layerwise describe MODEL --lr-find OUTPUT_DIR/lr_find.json`` shows the suggested multipliers per depth.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from glue import make_accelerator, make_dataloaders, make_optimizer  # noqa: E402

from hf_layerwise.errors import UsageError, run_cli  # noqa: E402
from hf_layerwise.glue import get_task  # noqa: E402
from hf_layerwise.glue.arguments import parse_args  # noqa: E402
from hf_layerwise.glue.auto_lr import LRChoice, choose_learning_rate, label_mean_offset, write_lr_find  # noqa: E402
from hf_layerwise.glue.recipe import (check_environment, load_data, load_model, load_tokenizer,  # noqa: E402
                                      model_config)
from hf_layerwise.glue.run_dir import RunFiles, check_output_dir, claim_output_dir  # noqa: E402
from hf_layerwise.lr_finder import label_offset_loss, scan_multiplier  # noqa: E402

TARGETS = ("top", "head", "depths")
FILES = RunFiles({"lr_find.json": "the range tests", "lr_find.png": "the range tests' curves"})
# options of the GLUE recipes that only training reads (with their defaults): given here they would do nothing
TRAINING_ONLY = {"resume_from_checkpoint": None, "save_model": False, "monitor": False, "early_stopping_patience": None,
                 "checkpointing_steps": None, "report_to": "none", "eval_every_epoch": True, "warmup_ratio": None,
                 "lr_scheduler_type": "linear", "lr_scheduler_kwargs": None, "class_weights": None,
                 "lr_find_fallback": None, "max_train_steps": None, "torch_compile": False, "num_train_epochs": 3.0,
                 "per_device_eval_batch_size": 64, "logging_steps": 10}


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--scan`` is this script's own; the rest are the GLUE recipe's flags (``--learning_rate auto`` by default)."""
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    own.add_argument("--scan", default="top")
    known, rest = own.parse_known_args(argv)
    targets = [t.strip() for t in known.scan.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise UsageError(f"--scan {known.scan!r}: unknown target(s) {bad}; use a comma-separated list of "
                         f"{', '.join(TARGETS)} (or '' for none)")
    if not any(a == "--learning_rate" or a.startswith("--learning_rate=") for a in rest):
        rest += ["--learning_rate", "auto"]
    return targets, rest


def check_options(args: Any, targets: list[str]) -> None:
    """Refuse what this script would not do: options that only training reads, and nothing to test."""
    for name, default in TRAINING_ONLY.items():
        value = getattr(args.train, name)
        if value != default and not (name == "warmup_ratio" and value in (0.0, 0.1)):  # the parser's default
            raise UsageError(f"--{name} {value}: recipes/lr_find.py runs range tests and does not train, so it does "
                             "nothing here; drop it (it belongs to recipes/glue.py)")
    if args.layerwise.cache_frozen:
        raise UsageError("--cache_frozen: recipes/lr_find.py runs the range tests on the whole model, so it does "
                         "nothing here; drop it")
    if args.train.learning_rate != "auto" and not targets:
        raise UsageError(f"--learning_rate {args.train.learning_rate} with --scan '': nothing to test; leave "
                         "--learning_rate out (or pass auto) to test the base LR, or name --scan targets")
    if "top" in targets and not args.layerwise.top_k:
        raise UsageError("--scan top: top_k is 0; pass --top_k N (or a preset with top blocks), or leave 'top' out")


def main(argv: list[str] | None = None) -> dict:
    targets, rest = split_argv(list(sys.argv[1:] if argv is None else argv))
    args = parse_args(rest, range_tests=True)
    check_options(args, targets)
    task = get_task(args.data.task_name)
    check_environment(args, cuda=torch.cuda.is_available() and not args.train.cpu)
    seen = check_output_dir(args.train.output_dir, FILES, overwrite=args.train.overwrite_output_dir, resumable=False)
    config = model_config(args)

    # -- data, model and the layer-wise optimizer, prepared as recipes/glue.py prepares them ---------------------------
    raw = load_data(args)
    tokenizer = load_tokenizer(args, config)
    accelerator = make_accelerator(args)
    from accelerate.utils import set_seed

    set_seed(args.train.seed)
    train_loader, _ = make_dataloaders(args, task, raw, tokenizer, accelerator)
    model = load_model(args, config, raw["train"]["label"], tokenizer.pad_token_id)
    optimizer, unfreezer = make_optimizer(args, model, accelerator)
    if accelerator.distributed_type in ("FSDP", "DEEPSPEED"):
        raise UsageError(f"recipes/lr_find.py under {accelerator.distributed_type}: the range test restores the model "
                         "from a full copy, which sharded training does not keep; use DDP or one process")
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    with claim_output_dir(args.train.output_dir, FILES, seen, overwrite=args.train.overwrite_output_dir,
                          program="recipes/lr_find.py", is_main_process=accelerator.is_main_process) as folder:
        choice = range_tests(args, targets, accelerator, model, optimizer, train_loader, unfreezer.layers,
                             label_mean_offset(args, raw["train"]["label"]))
        if accelerator.is_main_process:
            write_lr_find(args.train.output_dir, choice)
            print(table(choice))
            print(f"-> {os.path.join(args.train.output_dir, 'lr_find.json')} and lr_find.png")
        folder.commit()
        accelerator.wait_for_everyone()  # no rank tears gloo down while another is still in a collective
        accelerator.end_training()
    return choice.record()


def range_tests(args: Any, targets: list[str], accelerator: Any, model: Any, optimizer: Any, train_loader: Any,
                layers: Any, label_offset: float | None = None) -> LRChoice:
    """The base-LR test (``--learning_rate auto``), then every ``--scan`` target at the chosen base LR."""
    args.auto_top_multiplier = "top" in targets
    choice = choose_learning_rate(args, model, train_loader, layers, optimizer=optimizer, accelerator=accelerator,
                                  require_valley=False,  # a curve without a valley is reported, not refused
                                  label_offset=label_offset)
    L, cfg = layers.num_layers, choice.layerwise
    extra = []
    if "head" in targets:
        extra.append(("head", [L + 1]))
    if "depths" in targets:
        extra += [(f"depth{d}", [d]) for d in range(L + 2) if cfg.is_trainable(d, L)]
    for name, depths in extra:
        choice.tests.append(scan_multiplier(
            model, cfg, choice.learning_rate, train_loader, depths, name=name, layers=layers,
            num_steps=args.train.lr_find_steps, accelerator=accelerator, rule=args.train.lr_find_rule,
            accumulation_steps=args.train.gradient_accumulation_steps,
            loss_fn=None if label_offset is None else label_offset_loss(label_offset)))
        choice.tests[-1].settings["label_offset"] = label_offset
        choice.time_s = round(choice.time_s + choice.tests[-1].time_s, 2)
    return choice


def table(choice: LRChoice) -> str:
    """One line per test: what swept, over which range, where it stopped, every rule's suggestion."""
    lines = [f"{'test':<12} {'range':<17} {'steps':>5}  {'stopped':<10} {'valley':<6} "
             f"{'valley rule':>11} {'steep':>9} {'minimum':>9}"]
    for t in choice.tests:
        name = "base lr" if t.kind == "lr" else f"x {t.target}"
        s = t.suggestions
        cell = [f"{s[k]:.3g}" if s[k] is not None else "-" for k in ("valley", "steep", "minimum")]
        lines.append(f"{name:<12} {t.values[0]:.2g}..{t.values[-1]:<9.2g} {len(t.values):>5}  {t.stopped:<10} "
                     f"{'yes' if t.valley else 'no':<6} {cell[0]:>11} {cell[1]:>9} {cell[2]:>9}"
                     + ("" if t.valley else f"   ({t.note})"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines.append(f"chosen: base lr {choice.learning_rate:.3g}"
                     + (f", top-{choice.layerwise.top_k} multiplier {choice.layerwise.top_lr_multiplier:.3g}"
                        if any(t.target and t.target.startswith("top") for t in choice.tests) else "")
                     + f" ({choice.tests[0].rule} rule; {choice.time_s:.1f} s)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
