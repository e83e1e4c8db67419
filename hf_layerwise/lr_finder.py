"""The learning-rate range test (Smith 2017; fastai's ``lr_find``), for the whole schedule and for one group's multiplier.

:func:`find_lr` trains for at most ``num_steps`` optimizer steps with the learning rate growing exponentially from
``start_lr`` to ``end_lr`` -- every parameter group at ``lr * lr_scale``, so a layer-wise optimizer keeps its shape --
records the loss, smooths it and stops once the smoothed loss exceeds ``diverge_factor`` times its minimum. It then
puts back everything it touched: weights, optimizer state and learning rates, the GradScaler, the torch / CUDA /
numpy / Python RNG states, the data loader's generators and epoch, and the model's train/eval mode. A run that
starts after it is the run that would have started without it.

:func:`scan_multiplier` is the same test with the base learning rate held and one set of depths (the top-k blocks,
the head, one depth) sweeping its multiplier; it steps a temporary AdamW, so the caller's optimizer is not involved.

The suggestion is read off the whole recorded curve, after the test. The default rule, ``centred_valley``, is fastai's
``valley`` (a point two thirds of the way down the longest descent) on a *centred* moving mean of the raw losses
(+-a quarter decade of LR), which has no lag; fastai's own rules read the debiased EMA the test records, which lags by
up to an order of magnitude of LR on a short ramp and moved their picks onto the LRs where fine-tuning collapses
(issue 26, results/minilm/lr_rules.md). Every rule's pick is then capped at a third of the LR where the centred loss
is lowest (``cap_divisor``): beyond that minimum the loss rises, and a short test cannot see how much earlier a full
run becomes unstable. The EMA rules stay for comparison: ``valley`` (fastai's default), ``steep`` (the steepest
descent of the smoothed loss against log LR) and ``minimum`` (the LR of the lowest smoothed loss / 10).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .config import LayerwiseConfig
from .layers import LayerMap, discover_layers
from .optimizer import inner_optimizer, param_groups

__all__ = ["LRFinderResult", "find_lr", "scan_multiplier", "suggest", "analyse_curve", "centred_losses", "RULES",
           "DEFAULT_RULE", "CAP_DIVISOR", "plot_lr_find", "label_offset_loss"]

RULES = ("centred_valley", "valley", "steep", "minimum")
DEFAULT_RULE = "centred_valley"
CAP_DIVISOR = 3.0  # the pick is at most the LR of the centred curve's minimum / this
CENTRE_DECADES = 0.25  # the centred mean's half-width, in decades of LR
MIN_DROP = 0.05  # a usable valley: the centred loss falls by at least this fraction of its starting value


@dataclass
class LRFinderResult:
    """One range test: the value of each step (a learning rate, or a multiplier for a scan), the loss it gave (mean
    over processes), the smoothed loss, the suggestions of every rule and the one chosen.

    ``valley`` says whether the curve has a usable descent at all (the smoothed loss fell by at least 5% and did not
    still fall at the end of the range); ``note`` says why not. ``stopped`` is ``"diverged"`` (smoothed loss above
    ``diverge_factor`` x its minimum), ``"non-finite"`` or ``"end"`` (the range ran out: the ceiling may be too low).
    """

    kind: str  # "lr" or "multiplier"
    values: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float | None]
    rule: str
    stopped: str
    valley: bool
    note: str
    time_s: float
    target: str | None = None  # scan: the name of the swept depths
    depths: list[int] | None = None  # scan: the swept depths
    base_lr: float | None = None  # scan: the base learning rate held
    settings: dict[str, Any] = field(default_factory=dict)
    cap: float | None = None  # the guard: the pick is at most this (None: no cap, or a record from before it)

    @property
    def suggestion(self) -> float | None:
        """The value the chosen ``rule`` suggests, capped at ``cap`` (None if the curve is too short)."""
        pick = self.suggestions.get(self.rule)
        return pick if pick is None or self.cap is None else min(pick, self.cap)

    @property
    def capped(self) -> bool:
        """Whether the cap lowered the rule's pick."""
        pick = self.suggestions.get(self.rule)
        return pick is not None and self.cap is not None and pick > self.cap

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "suggestion": self.suggestion, "capped": self.capped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LRFinderResult:
        return cls(**{k: v for k, v in data.items() if k not in ("suggestion", "capped")})


# ------------------------------------------------------------------------------------------------------ suggestions
def _valley(values: Sequence[float], losses: Sequence[float]) -> tuple[int, int, int]:
    """fastai's rule: the longest strictly decreasing subsequence; the point a third plus a sixth into it.
    Returns (start, end, chosen index)."""
    n = len(losses)
    lds, max_start, max_end = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start, max_end, max(0, min(n - 1, max_start + int(sections) + int(sections / 2)))


def centred_losses(values: Sequence[float], losses: Sequence[float], decades: float = CENTRE_DECADES) -> list[float]:
    """The raw losses' centred moving mean over +-``decades`` of the (geometric) range: a smoothing with no lag, for a
    curve recorded in full. At 8 steps per decade the window is +-2 steps; near the ends it is cut short.

    Example:
        >>> centred_losses([1e-3, 1e-2, 1e-1], [3.0, 1.0, 2.0], decades=1.0)
        [2.0, 2.0, 1.5]
    """
    n = len(losses)
    if n < 2:
        return [float(x) for x in losses]
    per_decade = (n - 1) / math.log10(values[n - 1] / values[0])
    h = max(1, round(decades * per_decade))
    return [float(np.mean(losses[max(0, i - h):i + h + 1])) for i in range(n)]


def suggest(values: Sequence[float], smoothed: Sequence[float], skip_start: int = 0, *,
            losses: Sequence[float] | None = None) -> dict[str, float | None]:
    """Every rule's pick for a recorded curve, uncapped (None where the curve is too short). ``smoothed`` is the
    test's EMA (fastai's rules read it); ``losses``, the raw losses, give ``centred_valley`` (None without them).

    Example:
        >>> lrs = [10 ** (-6 + i / 10) for i in range(50)]
        >>> losses = [1.0 / (1 + 1e3 * lr) + (lr * 20) ** 2 for lr in lrs]   # a dip, then a rise
        >>> s = suggest(lrs, losses, losses=losses)
        >>> s["centred_valley"] < lrs[losses.index(min(losses))]   # before the lowest loss
        True
    """
    centred = centred_losses(values, losses) if losses is not None and len(values) > 1 else None
    values, smoothed = list(values)[skip_start:], list(smoothed)[skip_start:]
    if len(values) < 3:
        return {rule: None for rule in RULES}
    _, _, idx = _valley(values, smoothed)
    logs = np.log(np.asarray(values))
    slopes = np.diff(np.asarray(smoothed)) / np.diff(logs)
    return {"centred_valley": None if centred is None else float(values[_valley(values, centred[skip_start:])[2]]),
            "valley": float(values[idx]), "steep": float(values[int(np.argmin(slopes))]),
            "minimum": float(values[int(np.argmin(smoothed))]) / 10}


def _usable(values: Sequence[float], losses: Sequence[float], stopped: str) -> tuple[bool, str]:
    """Whether the curve has a usable descent, read on the centred (lag-free) losses: they fall by MIN_DROP of the
    starting level (the mean of the first points) and are not still falling at the end of the range."""
    if len(losses) < 5:
        return False, f"only {len(losses)} steps before the loss {stopped}: lower the floor (start) of the range"
    centred = centred_losses(values, losses)
    skip = min(len(values) // 10, 5)
    start = float(np.mean(losses[:skip + 1]))
    low = skip + int(np.argmin(centred[skip:]))
    drop = (start - centred[low]) / abs(start) if start else 0.0
    if drop < MIN_DROP:
        return False, (f"no usable valley: the loss fell by {100 * drop:.1f}% at most (< {100 * MIN_DROP:.0f}%)"
                       " over the range; the suggestion is not meaningful")
    if low >= len(losses) - 2 and stopped == "end":
        return False, (f"the loss still fell at the end of the range ({values[-1]:.3g}): raise the ceiling (end)")
    return True, ""


def _check_cap_divisor(cap_divisor: float | None) -> None:
    if cap_divisor is not None and (isinstance(cap_divisor, bool) or not isinstance(cap_divisor, (int, float))
                                    or not (math.isfinite(cap_divisor) and cap_divisor >= 1)):
        raise ValueError(f"cap_divisor={cap_divisor!r}: use a number >= 1 (1: the lowest-loss LR itself) or None")


def analyse_curve(values: Sequence[float], losses: Sequence[float], smoothed: Sequence[float], *,
                  stopped: str = "end", cap_divisor: float | None = CAP_DIVISOR) -> dict[str, Any]:
    """What :func:`find_lr` reads off a recorded curve: ``suggestions`` (every rule, uncapped), ``cap`` (the centred
    curve's lowest-loss LR / ``cap_divisor``; None without a cap), ``valley`` (is there a usable descent) and
    ``note`` (why not). A curve that ``stopped="diverged"`` loses its last point first. The first tenth of the curve
    (at most 5 points: mostly the starting loss) is not a candidate.

    Example:
        >>> lrs = [10 ** (-6 + i / 8) for i in range(40)]
        >>> losses = [0.7 - 0.3 * (lr > 1e-4) + 50 * lr for lr in lrs]
        >>> a = analyse_curve(lrs, losses, losses)
        >>> a["valley"], a["cap"] < 1e-3
        (True, True)
    """
    _check_cap_divisor(cap_divisor)
    keep = len(values) - 1 if stopped == "diverged" else len(values)  # the point that diverged is not a candidate
    values, losses, smoothed = list(values)[:keep], list(losses)[:keep], list(smoothed)[:keep]
    skip = min(len(values) // 10, 5)  # the first points are mostly the starting loss (fastai skips 5)
    suggestions = suggest(values, smoothed, skip_start=skip, losses=losses)
    cap = None
    if cap_divisor is not None and len(values) - skip >= 3:
        centred = centred_losses(values, losses)
        cap = float(values[skip + int(np.argmin(centred[skip:]))]) / cap_divisor
    valley, note = _usable(values, losses, stopped)
    return {"suggestions": suggestions, "cap": cap, "valley": valley, "note": note}


# ------------------------------------------------------------------------------------------------ exact restoration
def _loader_generators(batches: Any) -> list[torch.Generator]:
    """The torch generators a (possibly accelerate-wrapped) DataLoader draws its order from."""
    found: list[torch.Generator] = []
    for holder in (batches, getattr(batches, "sampler", None), getattr(batches, "batch_sampler", None),
                   getattr(getattr(batches, "batch_sampler", None), "sampler", None),
                   getattr(getattr(batches, "batch_sampler", None), "batch_sampler", None),
                   getattr(getattr(getattr(batches, "batch_sampler", None), "batch_sampler", None), "sampler", None)):
        for name in ("generator", "synchronized_generator"):
            gen = getattr(holder, name, None)
            if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
                found.append(gen)
    return found


class _Snapshot:
    """Everything a range test changes, copied before and put back after."""

    def __init__(self, model: nn.Module, optimizer: Any, batches: Any, scaler: Any) -> None:
        self.model, self.optimizer, self.batches, self.scaler = model, optimizer, batches, scaler
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.training = model.training
        self.optim_state = copy.deepcopy(inner_optimizer(optimizer).state_dict()) if optimizer is not None else None
        self.scaler_state = copy.deepcopy(scaler.state_dict()) if scaler is not None else None
        self.rng = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
                    torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized()
                    else None)
        self.generators = [(g, g.get_state()) for g in _loader_generators(batches)]
        self.iteration = getattr(batches, "iteration", None)

    def restore(self) -> None:
        with torch.no_grad():
            self.model.load_state_dict(self.weights)
        for param in self.model.parameters():
            param.grad = None
        self.model.train(self.training)
        if self.optim_state is not None:
            inner_optimizer(self.optimizer).load_state_dict(self.optim_state)
        if self.scaler_state is not None:
            self.scaler.load_state_dict(self.scaler_state)
        torch.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])
        random.setstate(self.rng[2])
        if self.rng[3] is not None:
            torch.cuda.set_rng_state_all(self.rng[3])
        for gen, state in self.generators:
            gen.set_state(state)
        if self.iteration is not None:
            self.batches.iteration = self.iteration


class _Batches:
    """Batches from ``batches``, started again when exhausted; an abandoned accelerate loader is told it ended (else
    accelerate's GradientState would still count it as the active loader)."""

    def __init__(self, batches: Iterable) -> None:
        self.batches, self.iterator, self.open = batches, None, False

    def __next__(self) -> Any:
        for _ in range(2):
            if self.iterator is None:
                self.iterator, self.open = iter(self.batches), True
            try:
                return next(self.iterator)
            except StopIteration:
                self.iterator, self.open = None, False
        raise ValueError("find_lr: the batches are empty")

    def close(self) -> None:
        if self.open:
            close = getattr(self.iterator, "close", None)
            if close is not None:
                close()
            end = getattr(self.batches, "end", None)
            if callable(end) and hasattr(self.batches, "gradient_state"):
                end()
        self.iterator, self.open = None, False


# --------------------------------------------------------------------------------------------------------- the test
def _default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    return model(**batch).loss


def label_offset_loss(offset: float) -> Callable[[nn.Module, Any], torch.Tensor]:
    """A range-test loss for a one-output regression model: the mean squared error of ``logits + offset`` against
    ``batch["labels"]``, i.e. the model's own MSE as if its head's bias started ``offset`` higher. Pass the training
    labels' mean: a fresh head predicts about 0, so the plain loss starts at mean**2 + variance and most of a test's
    descent is the bias learning the mean, which any LR large enough to move it does (issue 26: on STS-B, labels of
    mean 2.7 and variance 2.1, the picks then spread from 5.6e-5 to 4.2e-4 on one model and one collapsed its run).
    With the offset the loss starts near the labels' variance and falls only where the model learns beyond the mean.
    The model's weights are not touched; the batch is moved to the model's device.

    Example:
        >>> result = find_lr(model, optimizer, train_loader, loss_fn=label_offset_loss(2.70))   # doctest: +SKIP
    """
    if not math.isfinite(offset):
        raise ValueError(f"offset={offset}: must be a finite number (the training labels' mean)")

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        if logits.shape[-1] != 1:
            raise ValueError(f"label_offset_loss needs a one-output regression head; the model gives "
                             f"{logits.shape[-1]} outputs per example")
        labels = batch["labels"].to(device).float().view(-1)
        return F.mse_loss(logits.float().view(-1) + offset, labels)

    return loss_fn


def _mean_over_processes(value: torch.Tensor) -> float:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return float(value)


def _range_test(model: nn.Module, optimizer: Any, batches: Iterable, *, kind: str, start: float, end: float,
                set_value: Callable[[float], None], loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None,
                accelerator: Any, num_steps: int, accumulation_steps: int, max_grad_norm: float | None,
                smoothing: float | None, diverge_factor: float, rule: str, snapshot_optimizer: Any,
                cap_divisor: float | None) -> LRFinderResult:
    if rule not in RULES:
        raise ValueError(f"rule={rule!r}: use one of {', '.join(RULES)}")
    _check_cap_divisor(cap_divisor)  # before the test, not after it
    if not (0 < start < end and math.isfinite(end)):
        raise ValueError(f"range {start:g}..{end:g}: need 0 < start < end (a floor below the ceiling)")
    if num_steps < 5:
        raise ValueError(f"num_steps={num_steps}: a range test needs at least 5 steps")
    if smoothing is None:
        smoothing = 0.98 ** (100 / num_steps)
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing={smoothing}: must be in [0, 1)")
    if not diverge_factor > 1:
        raise ValueError(f"diverge_factor={diverge_factor}: must be > 1")
    loss_fn = loss_fn or _default_loss
    scaler = getattr(accelerator, "scaler", None)
    snapshot = _Snapshot(model, snapshot_optimizer, batches, scaler)
    source = _Batches(batches)
    values: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stopped, average, started = "end", 0.0, time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    rank = torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0
    bar = tqdm(total=num_steps, desc=f"range test ({kind})", leave=False, disable=rank != 0)
    try:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        for step in range(num_steps):
            value = start * (end / start) ** (step / (num_steps - 1))
            set_value(value)
            total = None
            for _ in range(accumulation_steps):
                batch = next(source)
                context = accelerator.autocast() if accelerator is not None else torch.autocast("cpu", enabled=False)
                with context:
                    loss = loss_fn(model, batch) / accumulation_steps
                if accelerator is not None:
                    accelerator.backward(loss)
                else:
                    loss.backward()
                total = loss.detach() if total is None else total + loss.detach()
            if max_grad_norm:
                if accelerator is not None:
                    accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                else:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            current = _mean_over_processes(total.float())
            if not math.isfinite(current):
                stopped = "non-finite"
                break
            average = smoothing * average + (1 - smoothing) * current
            values.append(value)
            losses.append(current)
            smoothed.append(average / (1 - smoothing ** (step + 1)))
            bar.update(1)
            if step >= max(3, num_steps // 20) and smoothed[-1] > diverge_factor * min(smoothed):
                stopped = "diverged"
                break
    finally:
        bar.close()
        source.close()
        snapshot.restore()
    read = analyse_curve(values, losses, smoothed, stopped=stopped, cap_divisor=cap_divisor)
    return LRFinderResult(kind=kind, values=values, losses=losses, smoothed=smoothed, rule=rule, stopped=stopped,
                          time_s=round(time.perf_counter() - started, 2), **read,
                          settings={"start": start, "end": end, "num_steps": num_steps,
                                    "accumulation_steps": accumulation_steps, "smoothing": smoothing,
                                    "diverge_factor": diverge_factor, "max_grad_norm": max_grad_norm,
                                    "cap_divisor": cap_divisor, "centre_decades": CENTRE_DECADES})


def find_lr(model: nn.Module, optimizer: Any, batches: Iterable, *, start_lr: float = 1e-7, end_lr: float = 1.0,
            num_steps: int = 100, loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
            accelerator: Any = None, accumulation_steps: int = 1, max_grad_norm: float | None = None,
            smoothing: float | None = None, diverge_factor: float = 4.0, rule: str = DEFAULT_RULE,
            cap_divisor: float | None = CAP_DIVISOR) -> LRFinderResult:
    """LR range test: up to ``num_steps`` optimizer steps with the LR growing exponentially from ``start_lr`` to
    ``end_lr``; stops when the smoothed loss passes ``diverge_factor`` x its minimum; everything restored after.

    Every parameter group trains at ``lr * lr_scale`` (the groups of :func:`~hf_layerwise.create_optimizer` carry
    ``lr_scale``; for other optimizers it is the group's LR over ``optimizer.defaults["lr"]``), so the suggestion is
    the *base* LR of a layer-wise optimizer. ``optimizer`` may be accelerate-prepared (and the model DDP-wrapped, the
    batches a prepared loader: each process its shard, the loss averaged over processes); FSDP and DeepSpeed are not
    supported (their sharded state is not snapshotted). ``loss_fn(model, batch)`` defaults to ``model(**batch).loss``.
    With ``accelerator``, its ``autocast``, ``backward`` and ``clip_grad_norm_`` are used. Restored afterwards:
    weights, optimizer state and LRs, GradScaler, RNG states, the loader's generators and epoch, train/eval mode;
    gradients are left as None. ``smoothing`` is the loss's exponential moving average factor; the default,
    ``0.98 ** (100 / num_steps)``, is fastai's 0.98 at 100 steps and the same window relative to the range otherwise
    (it decides when the test stops and feeds fastai's rules; ``centred_valley`` reads the raw losses).
    ``rule`` picks the suggestion (module docstring); ``cap_divisor`` caps it at the centred curve's lowest-loss LR
    divided by it (None: no cap). Check ``result.valley`` before training at the suggestion.

    Example:
        >>> optimizer = create_optimizer(model, LayerwiseConfig.preset("top3x5"), lr=1.0)   # doctest: +SKIP
        >>> result = find_lr(model, optimizer, train_loader, max_grad_norm=1.0)
        >>> result.suggestion, result.rule
        (8.4e-05, 'centred_valley')
    """
    inner = inner_optimizer(optimizer)
    default = inner.defaults.get("lr")
    scales = [float(g["lr_scale"]) if "lr_scale" in g else float(g["lr"]) / float(default)
              for g in inner.param_groups]

    def set_value(lr: float) -> None:
        for group, scale in zip(inner.param_groups, scales):
            group["lr"] = lr * scale

    return _range_test(model, optimizer, batches, kind="lr", start=start_lr, end=end_lr, set_value=set_value,
                       loss_fn=loss_fn, accelerator=accelerator, num_steps=num_steps,
                       accumulation_steps=accumulation_steps, max_grad_norm=max_grad_norm, smoothing=smoothing,
                       diverge_factor=diverge_factor, rule=rule, snapshot_optimizer=optimizer,
                       cap_divisor=cap_divisor)


def scan_multiplier(model: nn.Module, cfg: LayerwiseConfig, base_lr: float, batches: Iterable, depths: Iterable[int],
                    *, name: str | None = None, layers: LayerMap | None = None, start: float = 0.1,
                    end: float = 1000.0, num_steps: int = 100,
                    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None, accelerator: Any = None,
                    accumulation_steps: int = 1, smoothing: float | None = None, diverge_factor: float = 4.0,
                    rule: str = DEFAULT_RULE, betas: tuple[float, float] = (0.9, 0.999),
                    eps: float = 1e-8, cap_divisor: float | None = CAP_DIVISOR) -> LRFinderResult:
    """Per-group range test: the base LR held at ``base_lr``, only ``depths`` sweeping their multiplier from
    ``start`` to ``end`` (they train at ``base_lr * multiplier``; every other trainable depth at its ``cfg``
    multiplier); the suggestion is a multiplier, e.g. for ``LayerwiseConfig.top_lr_multiplier``.

    Steps a temporary AdamW built like :func:`~hf_layerwise.create_optimizer`'s (weight decay, clipping at
    ``cfg.max_grad_norm``); the model's freezing must already be applied (``depths`` must train). Weights, RNG states,
    the loader's generators and train/eval mode are restored after. Look at ``valley`` before using the suggestion:
    when the loss barely depends on the multiplier, the curve has no usable valley.

    Example:
        >>> L = discover_layers(model).num_layers                                          # doctest: +SKIP
        >>> scan = scan_multiplier(model, cfg, 1e-4, train_loader, depths=range(L - 2, L + 1), name="top3")
        >>> scan.suggestion, scan.valley
        (3.2, True)
    """
    layers = layers or discover_layers(model)
    targets = sorted(set(depths))
    L = layers.num_layers
    if not targets or any(not 0 <= d <= L + 1 for d in targets):
        raise ValueError(f"depths={targets}: the model has depths 0 (embeddings) to {L + 1} (head)")
    depth_of = {id(p): d for _, p, d in layers.named_depths(model)}
    groups = param_groups(model, cfg, base_lr, layers=layers)
    swept: list[dict[str, Any]] = []
    fixed: list[dict[str, Any]] = []
    for group in groups:
        inside = [p for p in group["params"] if depth_of.get(id(p)) in targets and p.requires_grad]
        outside = [p for p in group["params"] if depth_of.get(id(p)) not in targets]
        common = {"weight_decay": group["weight_decay"]}
        if inside:
            swept.append({"params": inside, "lr": base_lr, **common})
        if outside:
            fixed.append({"params": outside, "lr": group["lr"], **common})
    if not swept:
        raise ValueError(f"depths {targets} do not train under this config (frozen, or not yet unfrozen): nothing to "
                         "scan; pick trainable depths")
    temporary = torch.optim.AdamW(swept + fixed, lr=base_lr, betas=betas, eps=eps)

    def set_value(multiplier: float) -> None:
        for group in temporary.param_groups[:len(swept)]:
            group["lr"] = base_lr * multiplier

    result = _range_test(model, temporary, batches, kind="multiplier", start=start, end=end, set_value=set_value,
                         loss_fn=loss_fn, accelerator=accelerator, num_steps=num_steps,
                         accumulation_steps=accumulation_steps, max_grad_norm=cfg.max_grad_norm, smoothing=smoothing,
                         diverge_factor=diverge_factor, rule=rule, snapshot_optimizer=None,
                         cap_divisor=cap_divisor)
    result.target, result.depths, result.base_lr = name or f"depths {targets}", targets, base_lr
    return result


def plot_lr_find(results: Sequence[LRFinderResult], path: str) -> None:
    """``lr_find.png``: each test's smoothed loss (and raw loss, faint) against its value on a log axis, the
    suggestion marked. Needs matplotlib (``pip install 'hf-layerwise[monitor]'``).

    Example:
        >>> plot_lr_find([result], "runs/rte/lr_find.png")   # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results):
        ax.plot(result.values, result.losses, color="0.8", lw=0.8, label="loss")
        ax.plot(result.values, result.smoothed, color="C0", label="smoothed")
        if result.suggestion is not None:
            ax.axvline(result.suggestion, color="C3", ls="--",
                       label=f"{result.rule}: {result.suggestion:.3g}" + ("" if result.valley else " (no valley)"))
        ax.set_xscale("log")
        xlabel = "learning rate" if result.kind == "lr" else f"multiplier of {result.target} (base lr {result.base_lr:.3g})"
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training loss")
        if result.smoothed:
            low = min(result.smoothed)
            ax.set_ylim(min(min(result.losses), low) * 0.95, max(result.smoothed[0], low) * 1.6 + 1e-12)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

