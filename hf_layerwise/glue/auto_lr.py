"""``--learning_rate auto`` and ``--top_lr_multiplier auto`` of the GLUE recipes: the LR range test before training.

Both recipes (and ``recipes/lr_find.py``) call :func:`choose_learning_rate` once the model is frozen as configured and
the training batches exist: first the base LR (:func:`~hf_layerwise.find_lr`, every group keeping its multiplier),
then, with ``--top_lr_multiplier auto``, the top-k blocks' multiplier at that base LR
(:func:`~hf_layerwise.scan_multiplier`). Weights, optimizer, RNG streams and data order are restored after each test,
so the training that follows is the run ``--learning_rate <the suggestion>`` would have been. The curves, the
suggestions and the rule go to ``OUTPUT_DIR/lr_find.json`` (a resumed run reads its choice back from there) and
``lr_find.png``, and into ``results.json`` under ``lr_find``. On a regression task ``--learning_rate auto`` trains at
``--lr_find_fallback`` without a test by default (``--lr_find_regression``: measured there, the plain loss's descent is
the fresh head learning the labels' mean, and with that mean removed the curve is flat within batch noise).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ..config import LayerwiseConfig
from ..errors import RunFailed
from ..layers import LayerMap
from ..lr_finder import LRFinderResult, find_lr, label_offset_loss, plot_lr_find, scan_multiplier
from ..optimizer import create_optimizer, inner_optimizer, param_groups
from .arguments import LR_FIND_FALLBACK, RecipeArguments
from .data import get_task
from .run_dir import write_json_atomic

__all__ = ["LR_FIND_JSON", "LR_FIND_PNG", "PROVISIONAL_LR", "LRChoice", "wants_search", "provisional_lr",
           "choose_learning_rate", "label_mean_offset", "regroup", "write_lr_find"]

LR_FIND_JSON = "lr_find.json"
LR_FIND_PNG = "lr_find.png"
PROVISIONAL_LR = 1e-3  # the optimizer's base LR until the finder has chosen (the finder sets every group's LR itself)
logger = logging.getLogger("hf_layerwise.lr_find")
# Measured on issue 26's checks (README, "Calibrating the finder"): on a regression task most of the plain test's
# descent is a fresh head fitting the label mean, which says little about the LR a 3-epoch run tolerates; with the
# mean removed (offset) the 33-step curve is flat within batch noise, so its "valley" is noise.
REGRESSION_WARNING = ("LR range test on a regression task (--lr_find_regression %s): %s, so the pick (%.3g) can land "
                      "where a run collapses (e5-small STS-B: 4.2e-4, Spearman -0.16); check the score, or leave "
                      "--lr_find_regression at fallback")
REGRESSION_WHY = {"plain": "most of its descent is the head fitting the label mean",
                  "offset": "with the label mean removed its curve is flat within batch noise"}
REGRESSION_SKIP = ("--learning_rate auto on a regression task: no range test (it cannot see which LR a regression run "
                   "tolerates: README, 'Calibrating the finder'); training at %.3g (%s); pass --learning_rate, or "
                   "--lr_find_regression plain to test anyway")


@dataclass
class LRChoice:
    """What the range tests chose: the base LR, the layer-wise config (its top multiplier scanned), the tests."""

    learning_rate: float
    layerwise: LayerwiseConfig
    tests: list[LRFinderResult]
    time_s: float
    reused_from: str | None = None
    fallback: bool = False  # the base-LR curve had no usable valley: ``--lr_find_fallback`` was used

    @property
    def source(self) -> str:
        """Where the numbers came from, for the log line."""
        if self.reused_from:
            return f"from {self.reused_from}"
        if self.fallback:
            return ("--lr_find_fallback: the range test found no valley" if self.tests
                    else "--lr_find_fallback: no range test on a regression task")
        return "chosen by the LR range test"

    def record(self) -> dict[str, Any]:
        """``lr_find.json`` and the ``lr_find`` entry of ``results.json``."""
        return {"learning_rate": self.learning_rate, "top_lr_multiplier": self.layerwise.top_lr_multiplier,
                "rule": self.tests[0].rule if self.tests else None, "fallback": self.fallback,
                "time_s": self.time_s, "reused_from": self.reused_from, "tests": [t.to_dict() for t in self.tests]}


def wants_search(args: RecipeArguments) -> bool:
    return args.train.learning_rate == "auto" or args.auto_top_multiplier


def provisional_lr(args: RecipeArguments) -> float:
    """The base LR to build the optimizer with before the finder has run (the given one without ``auto``)."""
    return PROVISIONAL_LR if args.train.learning_rate == "auto" else float(args.train.learning_rate)


def _top_depths(cfg: LayerwiseConfig, num_layers: int) -> list[int]:
    return list(range(num_layers - cfg.top_k + 1, num_layers + 1))


def _reuse(path: str, args: RecipeArguments) -> LRChoice:
    """A resumed run takes the first segment's choice (the test is not run again)."""
    try:
        with open(path) as f:
            saved = json.load(f)
        lr, top = float(saved["learning_rate"]), float(saved["top_lr_multiplier"])
        tests = [LRFinderResult.from_dict(t) for t in saved["tests"]]
        fallback = bool(saved.get("fallback", False))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunFailed(f"{path}: cannot read the learning rate the first segment chose ({err}); resume needs the "
                        "lr_find.json of that run") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a scanned multiplier outside 1..20 was reported when it was chosen
        cfg = dataclasses.replace(args.layerwise, top_lr_multiplier=top)
    return LRChoice(lr, cfg, tests, time_s=0.0, reused_from=path, fallback=fallback)


def label_mean_offset(args: RecipeArguments, labels: Sequence[float]) -> float | None:
    """The offset the range tests add to a regression head's predictions: the mean of the training ``labels`` with
    ``--lr_find_regression offset``, else None (no offset)."""
    if args.train.lr_find_regression != "offset":
        return None
    values = np.asarray(labels, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"--lr_find_regression offset: the training labels have no finite mean ({values.size} labels)")
    return float(values.mean())


def choose_learning_rate(args: RecipeArguments, model: nn.Module, batches: Any, layers: LayerMap, *,
                         optimizer: Any = None, accelerator: Any = None, loss_fn: Any = None,
                         resume_from: str | None = None, require_valley: bool = True,
                         label_offset: float | None = None) -> LRChoice:
    """Run the range tests ``args`` asks for on ``model`` (frozen as configured) with ``batches`` (the training
    loader: each process its shard); return the choice. ``optimizer`` is the run's own (accelerate recipe: its state
    is restored after the test); without it a temporary layer-wise AdamW is used (Trainer recipe). ``resume_from``:
    a resumed run's ``lr_find.json``, read instead of testing again when it exists. ``require_valley=False``
    (recipes/lr_find.py, which only reports) takes the suggestion of a curve without a usable valley too.
    When the curve has no usable valley (a flat curve: RTE on MiniLM), the run trains at ``--lr_find_fallback``
    (default ``LR_FIND_FALLBACK``, 5e-5: the best fixed LR on the MiniLM grid's four tasks) with a one-line warning
    saying why; ``fallback`` is True in the record.
    On a regression task with ``--lr_find_regression fallback`` (the recipes' default) the base LR is
    ``--lr_find_fallback`` without a test, with one line saying why. ``label_offset`` (:func:`label_mean_offset`;
    required with ``--lr_find_regression offset``): the tests' loss is :func:`~hf_layerwise.label_offset_loss` of it
    instead of ``loss_fn``; every test records it in its settings.
    """
    if resume_from is not None and os.path.exists(resume_from):
        return _reuse(resume_from, args)
    train, cfg = args.train, args.layerwise
    if (train.lr_find_regression == "offset") != (label_offset is not None):
        raise ValueError(f"--lr_find_regression {train.lr_find_regression} with label_offset={label_offset}: "
                         "pass label_offset=label_mean_offset(args, training labels)")
    regression = get_task(args.data.task_name).is_regression
    if label_offset is not None:
        loss_fn = label_offset_loss(label_offset)
    common = dict(num_steps=train.lr_find_steps, loss_fn=loss_fn, accelerator=accelerator,
                  accumulation_steps=train.gradient_accumulation_steps, rule=train.lr_find_rule)
    started, tests, fallback = time.perf_counter(), [], False
    lr = train.learning_rate
    if lr == "auto" and regression and train.lr_find_regression == "fallback":
        given = train.lr_find_fallback is not None
        lr, fallback = (train.lr_find_fallback if given else LR_FIND_FALLBACK), True
        logger.warning(REGRESSION_SKIP, lr, "--lr_find_fallback" if given else "the default --lr_find_fallback")
    elif lr == "auto":
        opt = optimizer if optimizer is not None else create_optimizer(model, cfg, lr=PROVISIONAL_LR, layers=layers)
        result = find_lr(model, opt, batches, start_lr=train.lr_find_min_lr, end_lr=train.lr_find_max_lr,
                         max_grad_norm=cfg.max_grad_norm, **common)
        tests.append(result)
        no_answer = result.suggestion is None or (require_valley and not result.valley)
        if no_answer:
            given = train.lr_find_fallback is not None
            lr, fallback = (train.lr_find_fallback if given else LR_FIND_FALLBACK), True
            logger.warning("LR range test: %s; training at %.3g (%s); recipes/lr_find.py shows the curve",
                           result.note or f"no suggestion (stopped: {result.stopped})", lr,
                           "--lr_find_fallback" if given else "the default --lr_find_fallback")
        else:
            lr = result.suggestion
            capped = (f", capped at the lowest loss's LR / {result.settings['cap_divisor']:g} (the rule said "
                      f"{result.suggestions[result.rule]:.3g})" if result.capped else "")
            logger.info("LR range test: base learning rate %.3g (%s rule%s; %d steps, %s)", lr, result.rule, capped,
                        len(result.values), result.stopped)
            if regression:
                logger.warning(REGRESSION_WARNING, train.lr_find_regression,
                               REGRESSION_WHY[train.lr_find_regression], lr)
    lr = float(lr)
    if args.auto_top_multiplier:
        logger.warning("--top_lr_multiplier auto: the multiplier scan is a diagnostic, not a recommendation; on the "
                       "MiniLM study it picked 1x..191x and did not help (README, 'Choosing the learning rate')")
        scan = scan_multiplier(model, cfg, lr, batches, depths=_top_depths(cfg, layers.num_layers),
                               name=f"top{cfg.top_k}", layers=layers, **common)
        tests.append(scan)
        # no usable valley: the loss does not tell the multipliers apart, so the top blocks get no multiplier
        multiplier = scan.suggestion if scan.valley and scan.suggestion is not None else 1.0
        logger.info("multiplier scan of the top %d blocks at base lr %.3g: %.3g%s", cfg.top_k, lr, multiplier,
                    "" if scan.valley else f" ({scan.note}: 1.0 used)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a multiplier outside 1..20 is what the scan found; it is reported
            cfg = dataclasses.replace(cfg, top_lr_multiplier=multiplier)
    for test in tests:
        test.settings["label_offset"] = label_offset
    return LRChoice(lr, cfg, tests, time_s=round(time.perf_counter() - started, 2), fallback=fallback)


def regroup(optimizer: Any, model: nn.Module, cfg: LayerwiseConfig, lr: float, layers: LayerMap) -> None:
    """Give a fresh (stateless) optimizer the layer-wise groups of ``cfg`` at base ``lr``, in place: the object the
    engine prepared stays the same one (accelerate keeps it for checkpointing)."""
    inner = inner_optimizer(optimizer)
    if inner.state:
        raise RuntimeError("regroup: the optimizer has already stepped; its state would not match the new groups")
    inner.param_groups.clear()
    inner.defaults["lr"] = lr
    for group in param_groups(model, cfg, lr, layers=layers):
        inner.add_param_group(group)


def write_lr_find(output_dir: str, choice: LRChoice) -> None:
    """``lr_find.json`` and, with matplotlib installed, ``lr_find.png`` (a resumed run keeps the first ones)."""
    if choice.reused_from is not None:
        return
    write_json_atomic(os.path.join(output_dir, LR_FIND_JSON), choice.record())
    if not choice.tests:  # a regression task trained at the fallback without a test: no curve to draw
        return
    try:
        plot_lr_find(choice.tests, os.path.join(output_dir, LR_FIND_PNG))
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (pip install 'hf-layerwise[monitor]')", LR_FIND_PNG)
