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

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from glue import make_accelerator, make_dataloaders, make_optimizer  # noqa: E402

from hf_layerwise.errors import UsageError, run_cli  # noqa: E402
from hf_layerwise.glue import get_task  # noqa: E402
from hf_layerwise.glue.arguments import parse_args  # noqa: E402
from hf_layerwise.glue.auto_lr import LRChoice, choose_learning_rate, write_lr_find  # noqa: E402
from hf_layerwise.glue.recipe import (check_environment, load_data, load_model, load_tokenizer,  # noqa: E402
                                      model_config)
from hf_layerwise.glue.run_dir import check_output_dir, claim_output_dir, release_output_dir  # noqa: E402
from hf_layerwise.lr_finder import scan_multiplier  # noqa: E402

TARGETS = ("top", "head", "depths")


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--scan`` is this script's own; the rest are the GLUE recipe's flags (``--learning_rate auto`` by default)."""
    own = argparse.ArgumentParser(add_help=False)
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


def main(argv: list[str] | None = None) -> dict:
    targets, rest = split_argv(list(sys.argv[1:] if argv is None else argv))
    args = parse_args(rest)
    if "top" in targets and not args.layerwise.top_k:
        raise UsageError("--scan top: top_k is 0; pass --top_k N (or a preset with top blocks), or leave 'top' out")
    task = get_task(args.data.task_name)
    check_environment(args, cuda=torch.cuda.is_available() and not args.train.cpu)
    check_output_dir(args.train.output_dir, overwrite=args.train.overwrite_output_dir)
    config = model_config(args)

    # -- data, model and the layer-wise optimizer, prepared as recipes/glue.py prepares them ---------------------------
    raw = load_data(args)
    tokenizer = load_tokenizer(args)
    accelerator = make_accelerator(args)
    from accelerate.utils import set_seed

    set_seed(args.train.seed)
    train_loader, _ = make_dataloaders(args, task, raw, tokenizer, accelerator)
    model = load_model(args, config, raw["train"]["label"])
    optimizer, unfreezer = make_optimizer(args, model, accelerator)
    if accelerator.distributed_type in ("FSDP", "DEEPSPEED"):
        raise UsageError(f"recipes/lr_find.py under {accelerator.distributed_type}: the range test restores the model "
                         "from a full copy, which sharded training does not keep; use DDP or one process")
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    claim_output_dir(args.train.output_dir, overwrite=args.train.overwrite_output_dir,
                     is_main_process=accelerator.is_main_process)

    # -- the range tests -------------------------------------------------------------------------------------------------
    layers = unfreezer.layers
    args.auto_top_multiplier = "top" in targets
    choice = choose_learning_rate(args, model, train_loader, layers, optimizer=optimizer, accelerator=accelerator,
                                  require_valley=False)  # a curve without a valley is reported, not refused
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
            accumulation_steps=args.train.gradient_accumulation_steps))
        choice.time_s = round(choice.time_s + choice.tests[-1].time_s, 2)
    if accelerator.is_main_process:
        write_lr_find(args.train.output_dir, choice)
        print(table(choice))
        print(f"-> {os.path.join(args.train.output_dir, 'lr_find.json')} and lr_find.png")
    accelerator.end_training()
    release_output_dir(args.train.output_dir)
    return choice.record()


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
