"""Command line.

``python -m hf_layerwise describe MODEL [--preset NAME | --freeze-below N --top-k K ...]`` prints, per depth:
the module paths, trainable parameters, LR multiplier, weight decay and whether it is frozen. MODEL is a local
model folder or a hub name (offline, a local folder).

``--lr-find OUTPUT_DIR/lr_find.json`` (from ``recipes/lr_find.py`` or a ``--learning_rate auto`` run) adds the
multiplier each scan suggests for the depths it swept.

``--lora-r R [--lora-target-modules q_proj,v_proj]`` wraps the model with PEFT LoRA adapters first (as the recipes'
``--lora_r``): the table then counts what trains (adapters and the head) and has an ``adapters`` column.

``python -m hf_layerwise report RUN_DIR`` renders the health log of a run (PNG plots and report.html).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import NoReturn

from torch import nn
from transformers import HfArgumentParser

from .adapters import add_lora
from .config import LayerwiseArguments, LayerwiseConfig
from .errors import DEBUG_ENV, UsageError, one_line, run_cli, usage_errors
from .layers import discover_layers
from .optimizer import check_model_fit, no_weight_decay_names


def scan_suggestions(lr_find: dict) -> tuple[str, dict[int, list[str]]]:
    """From a ``lr_find.json``: the base-LR line and, per depth, what each multiplier scan that swept it suggests."""
    per_depth: dict[int, list[str]] = {}
    for test in lr_find.get("tests", []):
        if test.get("kind") != "multiplier":
            continue
        value = f"{test['suggestion']:.3g}" if test.get("valley") and test.get("suggestion") else "no valley"
        for depth in test.get("depths") or []:
            per_depth.setdefault(depth, []).append(f"{value} ({test['target']})")
    base = lr_find.get("learning_rate")
    why = "the range test found no valley" if lr_find.get("tests") else "no range test on a regression task"
    fallback = f" (--lr_find_fallback: {why})" if lr_find.get("fallback") else ""
    return (f"base learning rate of the scans: {base:.3g}{fallback}" if isinstance(base, (int, float)) else ""), per_depth


def describe_table(model: nn.Module, cfg: LayerwiseConfig, lr_find: dict | None = None) -> str:
    """The per-depth table that ``describe`` prints; with ``lr_find`` (a loaded ``lr_find.json``), a column with the
    multipliers its scans suggest.

    Example:
        >>> print(describe_table(model, LayerwiseConfig.preset("top3x5")))   # doctest: +SKIP
    """
    layers = discover_layers(model)
    cfg.validate_for(layers.num_layers)
    check_model_fit(cfg, layers, model)
    no_decay = no_weight_decay_names(model)
    L = layers.num_layers
    base_line, scans = scan_suggestions(lr_find) if lr_find is not None else ("", {})
    adapters = bool(layers.adapter_frozen)
    rows = [("depth", "modules", "params", "lr x", "weight decay", "frozen") + (("adapters",) if adapters else ())
            + (("scan suggests",) if lr_find is not None else ())]
    total = trainable = 0
    by_depth: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for name, param, depth in layers.named_depths(model):
        by_depth.setdefault(depth, []).append((name, param))
    for depth, paths in layers.modules.items():
        count = sum(p.numel() for _, p in by_depth[depth])
        own = [(n, p) for n, p in by_depth[depth] if layers.can_train(n)]  # what may train (PEFT: adapters, head)
        decayed = sum(p.numel() for n, p in own if n not in no_decay)
        total += count
        if not own:
            frozen, lr, wd = "yes (base weights)", "-", "-"
        elif not cfg.is_trainable(depth, L):
            frozen, lr, wd = "yes", "-", "-"
        else:
            trainable += sum(p.numel() for _, p in own)
            stage = cfg.unfreeze_stage(depth, L)
            frozen = f"until stage {stage}" if stage else "no"
            lr = f"{cfg.lr_multiplier(depth, L):.4g}"
            wd = f"{cfg.weight_decay:g} on {decayed:,}" if cfg.weight_decay else "0"
        shown = paths if len(paths) <= 2 else [paths[0], f"... +{len(paths) - 1} more"]
        label = {0: "0 (embeddings)", L + 1: f"{L + 1} (head)"}.get(depth, str(depth))
        rows.append((label, ", ".join(shown), f"{count:,}", lr, wd, frozen)
                    + ((f"{sum(p.numel() for _, p in own):,}",) if adapters else ())
                    + ((", ".join(scans.get(depth, ["-"])),) if lr_find is not None else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"\n{type(model).__name__}: {L} blocks in {layers.block_path}; "
                 f"trainable {trainable:,} of {total:,} parameters")
    if cfg.loraplus_ratio is not None:
        lines.append(f"LoRA+: the LoRA B matrices train at {cfg.loraplus_ratio:g} x their depth's lr")
    if base_line:
        lines.append(base_line)
    return "\n".join(lines)


def _load(model_name: str, num_labels: int) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    if not os.path.isdir(model_name) and (os.path.isabs(model_name) or model_name.startswith((".", "~"))):
        raise UsageError(f"{model_name}: no such model folder")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the table is the output; no load report for a head describe adds itself
    try:
        return AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=num_labels)
    except Exception as err:  # missing config/weights, offline hub name, unsupported architecture
        raise UsageError(f"{model_name}: cannot load the model: {one_line(err)[:300]}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def _main(argv: list[str]) -> int:
    top = _Parser(prog="python -m hf_layerwise", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    describe = sub.add_parser("describe", help="show the depth table of a model under a layer-wise config")
    describe.add_argument("model", help="local model folder or hub name")
    describe.add_argument("--num-labels", type=int, default=2)
    describe.add_argument("--lr-find", help="a lr_find.json (recipes/lr_find.py): show the multipliers its scans suggest")
    describe.add_argument("--lora-r", type=int, help="wrap the model with PEFT LoRA adapters of this rank first")
    describe.add_argument("--lora-target-modules", help="with --lora-r: comma-separated module names (default: "
                          "PEFT's choice for the architecture)")
    report = sub.add_parser("report", help="plots and an HTML page from a run's health.jsonl")
    report.add_argument("run_dir")
    for parser in (describe, report):
        parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (or {DEBUG_ENV}=1)")
    if not argv or argv[0] not in ("describe", "report"):
        top.parse_args(argv)  # --help, or an error naming the commands
    if argv[0] == "report":
        from .report import render_report

        args = top.parse_args(argv)
        with usage_errors(args.run_dir):
            print(render_report(args.run_dir))
        return 0
    known, rest = describe.parse_known_args(argv[1:])
    if known.num_labels < 1:
        raise UsageError(f"--num-labels {known.num_labels}: must be >= 1")
    try:
        (layerwise,) = HfArgumentParser(LayerwiseArguments).parse_args_into_dataclasses(rest)
    except ValueError as err:
        raise UsageError(f"{one_line(err)} (see python -m hf_layerwise describe --help)") from None
    with usage_errors("layer-wise options"):
        cfg = layerwise.to_config()
    lr_find = None
    if known.lr_find is not None:
        try:
            with open(known.lr_find) as f:
                lr_find = json.load(f)
            if not isinstance(lr_find, dict) or not isinstance(lr_find.get("tests"), list):
                raise ValueError("no 'tests' list")
        except (OSError, ValueError) as err:
            raise UsageError(f"--lr-find {known.lr_find}: not a lr_find.json of recipes/lr_find.py ({one_line(err)})"
                             ) from None
    if known.lora_target_modules is not None and known.lora_r is None:
        raise UsageError("--lora-target-modules applies only with --lora-r: add --lora-r R, or drop it")
    if known.lora_r is not None and known.lora_r < 1:
        raise UsageError(f"--lora-r {known.lora_r}: the LoRA rank must be an integer >= 1")
    model = _load(known.model, known.num_labels)
    if known.lora_r is not None:
        targets = known.lora_target_modules
        modules = None if targets is None else [m.strip() for m in targets.split(",") if m.strip()]
        try:
            model = add_lora(model, known.lora_r, target_modules=modules)
        except (ImportError, ValueError) as err:
            raise UsageError(f"--lora-r {known.lora_r}: {err}") from None
    with usage_errors(known.model):
        print(describe_table(model, cfg, lr_find))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hf_layerwise``: errors print one ``error: ...`` line (exit 2 for bad usage, 1 for a failure)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
