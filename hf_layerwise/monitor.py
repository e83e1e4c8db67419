"""Training health per depth: weight/gradient/update statistics, dead FFN units, alarms, JSONL and TensorBoard.

Every ``every_n_steps`` optimizer steps the monitor measures, for each depth (0 = embeddings, 1..L blocks,
L+1 head): the weight norm, the gradient norm (pre-clip: taken by gradient hooks as backward finishes), the
update-to-weight ratio ``||dW|| / ||W||`` of that optimizer step, the fraction of near-zero weights, and for
each block the fraction of FFN units that never activated on that step's batch (forward hooks). Hooks exist
only during monitored steps; the other steps do no extra work.

Alarms (a warning naming the depth, the figure and the likely cause; non-finite values raise
:class:`NonFiniteError` by default): non-finite loss/weights/gradients; a gradient-norm spike over
``spike_factor`` x the running median; an update ratio outside ``update_ratio_band``; a weight norm that
shrank at each of the last ``shrink_window`` measurements; a dead-unit fraction above ``dead_unit_threshold``.

Everything measured goes to ``RUN_DIR/health.jsonl``; ``python -m hf_layerwise report RUN_DIR`` draws it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import warnings
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .layers import LayerMap, discover_layers
from .stats import is_sharded, local_part, lr_by_depth, sum_over_shards

__all__ = ["HealthConfig", "HealthMonitor", "NonFiniteError", "HealthAlarm", "check_finite_parameters"]

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A loss, weight or gradient became NaN/inf; the run stops before the value is saved."""


def check_finite_parameters(model: nn.Module, step: int) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter that holds a NaN/inf (call before saving weights).

    One host synchronisation for the whole model. Needs no monitor, so a run without ``--monitor`` still never
    writes a non-finite checkpoint.

    Example:
        >>> check_finite_parameters(model, step=120)     # doctest: +SKIP
    """
    named = list(model.named_parameters())
    if not named:
        return
    with torch.no_grad():  # this process's parts; under FSDP every process learns of a NaN in any shard
        finite = torch.stack([torch.isfinite(local_part(p)).all() for _, p in named]).to(torch.float64)
        if is_sharded(p for _, p in named):
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        finite = finite.cpu()
    if not bool(finite.all()):
        name = named[int((finite == 0).nonzero()[0])][0]
        raise NonFiniteError(f"step {step}: parameter {name} holds NaN/inf values, so no checkpoint or model is "
                             "saved; likely cause: a too high learning rate, clipping off, or invalid inputs")


class HealthAlarm(UserWarning):
    """A training-health alarm (see :class:`HealthConfig`)."""


@dataclass(frozen=True)
class HealthConfig:
    """What the monitor measures and when it raises an alarm.

    Example:
        >>> HealthConfig(every_n_steps=50, update_ratio_band=(1e-5, 1e-2)).every_n_steps
        50
    """

    every_n_steps: int = 50
    near_zero: float = 1e-3
    spike_factor: float = 10.0
    spike_window: int = 20
    update_ratio_band: tuple[float, float] = (1e-6, 1e-1)
    shrink_window: int = 5
    dead_unit_threshold: float = 0.5
    stop_on_nonfinite: bool = True
    histograms: bool = True
    histogram_bins: int = 60

    def __post_init__(self) -> None:
        if self.every_n_steps < 1:
            raise ValueError(f"HealthConfig.every_n_steps={self.every_n_steps}: must be >= 1")
        low, high = self.update_ratio_band
        if not 0 <= low < high:
            raise ValueError(f"HealthConfig.update_ratio_band={self.update_ratio_band}: need 0 <= low < high")


def _ffn_input(block: nn.Module) -> nn.Linear | None:
    """The FFN up-projection of a block: its ``nn.Linear`` with the most outputs (intermediate size)."""
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    widest = max(linears, key=lambda m: m.out_features)
    return widest if widest.out_features > min(m.in_features for m in linears) else None


class HealthMonitor:
    """Measures training health per depth every ``cfg.every_n_steps`` steps.

    In an accelerate loop::

        monitor = HealthMonitor(model, HealthConfig(every_n_steps=50), run_dir=args.output_dir)
        for step, batch in enumerate(loader, 1):
            monitor.begin(step)                   # hooks attached on monitored steps only
            loss = model(**batch).loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            monitor.before_optimizer_step()
            optimizer.step(); scheduler.step(); optimizer.zero_grad()
            logs = monitor.end(optimizer, loss)  # {} on other steps; raises NonFiniteError on NaN/inf
            if logs: accelerator.log(logs, step=step)
        monitor.close()

    Only the main process (``is_main_process=True``) writes files; every process measures and alarms. A model
    compiled with ``torch.compile`` gets every figure but the dead-unit fractions (its graph skips the hooks). On a model
    sharded by FSDP1 (``use_orig_params=True``) or FSDP2, norms, counts and update ratios are those of the full
    tensors (each process's shards summed in one collective); the histograms show the main process's shards.
    """

    def __init__(self, model: nn.Module, cfg: HealthConfig | None = None, run_dir: str | None = None,
                 layers: LayerMap | None = None, is_main_process: bool = True) -> None:
        self.model = model
        self.cfg = cfg or HealthConfig()
        self.layers = layers or discover_layers(model)
        self.is_main = is_main_process
        self.run_dir = run_dir
        self._by_depth: dict[int, list[tuple[str, nn.Parameter]]] = {}
        for name, param, depth in self.layers.named_depths(model):
            if self.layers.can_train(name):  # a PEFT model's base weights never change: nothing to watch
                self._by_depth.setdefault(depth, []).append((name, param))
        self._sharded = is_sharded(p for ps in self._by_depth.values() for _, p in ps)  # FSDP: sum over processes
        blocks = self.layers.blocks(model) if self.layers.block_path else []
        self._ffn = {i + 1: _ffn_input(b) for i, b in enumerate(blocks)}
        if any("_orig_mod" in name.split(".") for name, _ in model.named_modules()):
            # a compiled graph does not call forward hooks added after compilation: say so instead of going quiet
            logger.warning("HealthMonitor: the model is compiled (torch.compile), which ignores hooks added later; "
                           "dead-unit fractions are not measured")
            self._ffn = {}
        self._hooks: list[Any] = []
        self._step: int | None = None
        self._grad_sq: dict[int, float] = {}
        self._ever_active: dict[int, torch.Tensor] = {}
        self._before: dict[int, list[torch.Tensor]] | None = None
        self._history: dict[str, dict[int, deque]] = {"grad_norm": {}, "weight_norm": {}}
        self._jsonl = None
        self._tb = None
        if run_dir and self.is_main:
            os.makedirs(run_dir, exist_ok=True)
            self._jsonl = open(os.path.join(run_dir, "health.jsonl"), "a")  # noqa: SIM115 -- closed in close()
            self._write({"type": "config", "num_layers": self.layers.num_layers, **asdict(self.cfg)})
            if self.cfg.histograms:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(os.path.join(run_dir, "health_tb"))
                except ImportError:  # tensorboard is the [monitor] extra
                    logger.info("tensorboard not installed: no weight/gradient histograms")

    # -- per step ------------------------------------------------------------------------------------
    def should_measure(self, step: int) -> bool:
        return step % self.cfg.every_n_steps == 0

    @property
    def active(self) -> bool:
        return self._step is not None

    def begin(self, step: int, grad_hooks: bool = True) -> bool:
        """Start optimizer step ``step`` (1-based); on monitored steps attach the hooks. Returns whether it measures.

        ``grad_hooks=False`` when the caller will pass the per-depth gradient norms to :meth:`end` itself
        (``grad_norms=``): then no gradient hooks are attached and no norm is computed twice."""
        if not self.should_measure(step):
            return False
        self._step = step
        self._grad_sq, self._ever_active = {}, {}
        for depth, params in self._by_depth.items():
            for _, param in params:
                if grad_hooks and param.requires_grad:
                    self._hooks.append(param.register_post_accumulate_grad_hook(self._grad_hook(depth)))
        for depth, linear in self._ffn.items():
            if linear is not None:
                self._hooks.append(linear.register_forward_hook(self._ffn_hook(depth)))
        return True

    def _grad_hook(self, depth: int):
        def hook(param: torch.Tensor) -> None:  # the latest accumulated gradient wins; this process's part of it
            self._grad_sq[id(param)] = (depth, local_part(param.grad.detach()).double().pow(2).sum())
        return hook

    def _ffn_hook(self, depth: int):
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            active = (output.detach() > 0).reshape(-1, output.shape[-1]).any(0)
            seen = self._ever_active.get(depth)
            self._ever_active[depth] = active if seen is None else seen | active
        return hook

    def before_optimizer_step(self) -> None:
        """Check the gradients are finite and remember the weights the optimizer is about to change (monitored
        steps only): a NaN gradient stops the run before it reaches the weights."""
        if self._step is None:
            return
        depths = sorted(self._by_depth)
        with torch.no_grad():
            squares = self._summed([[local_part(p.grad) for _, p in self._by_depth[d] if p.grad is not None]
                                    for d in depths])
        for depth, square in zip(depths, squares.tolist()):
            if not math.isfinite(square):
                self._nonfinite(self._step, f"depth {depth}: gradients are non-finite before the optimizer step",
                                "a too high learning rate for this depth, fp16 overflow, or a bad batch")
        self._before = {d: [local_part(p.detach()).clone() for p in self._trainable(d)] for d in self._by_depth}

    def _trainable(self, depth: int) -> list[nn.Parameter]:
        return [p for _, p in self._by_depth[depth] if p.requires_grad]

    def _summed(self, groups: list[list[torch.Tensor]], *extra: torch.Tensor) -> torch.Tensor:
        """Per group, the sum of squares of its tensors (plus ``extra`` per-group figures), added up over the
        processes when the model is sharded: one collective and one host sync."""
        device = next((t.device for g in groups for t in g), torch.device("cpu"))
        zero = torch.zeros((), dtype=torch.float64, device=device)
        squares = torch.stack([sum((t.double().pow(2).sum() for t in g), zero) for g in groups])
        return sum_over_shards(torch.stack([squares, *(e.to(squares) for e in extra)]) if extra else squares,
                               self._sharded).cpu()

    def end(self, optimizer: torch.optim.Optimizer | None = None, loss: torch.Tensor | float | None = None,
            grad_norms: dict[int, float] | None = None) -> dict[str, float]:
        """Finish the step: on monitored steps compute, alarm, record and return the scalars; else ``{}``.

        ``grad_norms`` (depth -> pre-clip norm, e.g. from :class:`DepthGradNorms` called after ``backward`` and
        before clipping) replaces the norms the gradient hooks saw. Under DDP the hooks see each rank's own
        gradient before averaging; norms taken from ``param.grad`` after backward are the averaged ones."""
        if self._step is None:
            return {}
        step, self._step = self._step, None
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        record: dict[str, Any] = {"type": "step", "step": step, "depths": {}}
        if loss is not None:
            value = float(loss)
            record["loss"] = value
            if not math.isfinite(value):
                self._nonfinite(step, f"the loss is {value}", "the learning rate is too high or clipping is off")
        depths = sorted(self._by_depth)
        with torch.no_grad():  # this process's parts; under FSDP summed over the processes in one collective
            weights = [[local_part(p.detach()) for _, p in self._by_depth[d]] for d in depths]
            near = torch.tensor([sum(int((w.abs() < self.cfg.near_zero).sum()) for w in ws) for ws in weights],
                                dtype=torch.float64)
            numel = torch.tensor([sum(w.numel() for w in ws) for ws in weights], dtype=torch.float64)
            hooked = torch.zeros(len(depths), dtype=torch.float64)
            for depth, square in self._grad_sq.values():
                hooked[depths.index(depth)] += float(square)
            w_sq, near, numel, hooked = self._summed(weights, near, numel, hooked).unbind(0)
            d_sq = None
            if self._before is not None:
                d_sq = self._summed([[local_part(p.detach()) - b for p, b in zip(self._trainable(d), self._before[d])]
                                     for d in depths])
        hooked_depths = {d for d, _ in self._grad_sq.values()}
        for i, depth in enumerate(depths):
            w_norm = math.sqrt(float(w_sq[i]))
            stats = {"weight_norm": w_norm, "near_zero": float(near[i]) / max(float(numel[i]), 1.0)}
            if grad_norms is not None:
                if depth in grad_norms:
                    stats["grad_norm"] = grad_norms[depth]
            elif depth in hooked_depths or hooked[i] > 0:
                stats["grad_norm"] = math.sqrt(float(hooked[i]))
            if d_sq is not None and self._before.get(depth):
                stats["update_ratio"] = math.sqrt(float(d_sq[i])) / w_norm if w_norm > 0 else math.inf
            if depth in self._ever_active:
                stats["dead_units"] = float(1.0 - self._ever_active[depth].float().mean())
            record["depths"][depth] = stats
            for figure in ("weight_norm", "grad_norm"):
                if figure in stats and not math.isfinite(stats[figure]):
                    what = "weights" if figure == "weight_norm" else "gradients"
                    self._nonfinite(step, f"depth {depth}: {what} are non-finite ({figure}={stats[figure]})",
                                    "a too high learning rate for this depth, fp16 overflow, or missing clipping")
        self._before = None
        if optimizer is not None:
            record["lr"] = lr_by_depth(optimizer)
        record["alarms"] = self._alarms(record["depths"])
        self._write(record)
        if self._tb is not None:
            self._histograms(step)
        return self._scalars(record)

    # -- alarms ----------------------------------------------------------------------------------------
    def _nonfinite(self, step: int, what: str, cause: str) -> None:
        message = f"step {step}: {what}; likely cause: {cause}"
        self._write({"type": "alarm", "step": step, "kind": "nonfinite", "message": message})
        if self.cfg.stop_on_nonfinite:
            self.close()
            raise NonFiniteError(message + ". The run stops here; the last checkpoint saved before is intact.")
        warnings.warn(message, HealthAlarm, stacklevel=3)

    def _alarms(self, depths: dict[int, dict[str, float]]) -> list[str]:
        alarms = []
        low, high = self.cfg.update_ratio_band
        for depth, s in depths.items():
            g = s.get("grad_norm")
            history = self._history["grad_norm"].setdefault(depth, deque(maxlen=self.cfg.spike_window))
            if g is not None:
                if len(history) >= 3 and g > self.cfg.spike_factor * statistics.median(history) > 0:
                    alarms.append(f"depth {depth}: gradient norm {g:.3g} is {g / statistics.median(history):.1f}x "
                                  f"the running median {statistics.median(history):.3g}; likely cause: a bad batch "
                                  "or a learning rate too high for this depth")
                history.append(g)
            r = s.get("update_ratio")
            if r is not None and not low <= r <= high:
                side = "above" if r > high else "below"
                cause = "learning rate too high for this depth" if r > high else "this depth barely trains"
                alarms.append(f"depth {depth}: update/weight ratio {r:.2e} is {side} the band [{low:g}, {high:g}]; "
                              f"likely cause: {cause}")
            norms = self._history["weight_norm"].setdefault(depth, deque(maxlen=self.cfg.shrink_window + 1))
            norms.append(s["weight_norm"])
            if len(norms) == norms.maxlen and all(b < a for a, b in zip(norms, list(norms)[1:])):
                alarms.append(f"depth {depth}: weight norm shrank at each of the last {self.cfg.shrink_window} "
                              f"measurements ({norms[0]:.4g} -> {norms[-1]:.4g}); likely cause: learning rate or "
                              "weight decay too high")
            dead = s.get("dead_units")
            if dead is not None and dead > self.cfg.dead_unit_threshold:
                alarms.append(f"depth {depth}: {100 * dead:.0f}% of FFN units never activated on this batch; "
                              "likely cause: dead units after too large updates")
        for message in alarms:
            warnings.warn(message, HealthAlarm, stacklevel=4)
        return alarms

    # -- output ----------------------------------------------------------------------------------------
    @staticmethod
    def _scalars(record: dict) -> dict[str, float]:
        out = {f"health/{figure}/depth{d}": v for d, s in record["depths"].items() for figure, v in s.items()}
        out["health/alarms"] = float(len(record["alarms"]))
        return out

    def _write(self, record: dict) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def _matrices(self, depth: int) -> list[nn.Parameter]:
        """A depth's weight matrices (and embedding tables): norm gains sit near 1 and biases near 0, and mixed in
        they would draw a second mode that looks like the bimodal failure signature."""
        return [p for _, p in self._by_depth[depth] if p.dim() >= 2] or [p for _, p in self._by_depth[depth]]

    def _histograms(self, step: int) -> None:
        for depth in self._by_depth:
            params = self._matrices(depth)
            weights = torch.cat([local_part(p.detach()).float().flatten() for p in params])
            if weights.numel():  # an FSDP process may hold no part of a depth
                self._tb.add_histogram(f"weights/depth{depth}", weights, step)
            grads = [local_part(p.grad.detach()).float().flatten() for p in params if p.grad is not None]
            if grads and sum(g.numel() for g in grads):
                self._tb.add_histogram(f"grads/depth{depth}", torch.cat(grads), step)
        self._tb.flush()

    def final_histograms(self, step: int) -> None:
        """Write each depth's weight-matrix histogram to health.jsonl (the report draws the last one)."""
        for depth in sorted(self._by_depth):
            weights = torch.cat([local_part(p.detach()).float().flatten().cpu() for p in self._matrices(depth)])
            if not weights.numel():
                continue
            lo, hi = float(weights.min()), float(weights.max())
            counts = torch.histc(weights, bins=self.cfg.histogram_bins, min=lo, max=hi if hi > lo else lo + 1e-6)
            self._write({"type": "weight_histogram", "step": step, "depth": depth, "min": lo, "max": hi,
                         "counts": counts.tolist()})

    def check_finite_weights(self, step: int) -> None:
        """Raise :class:`NonFiniteError` if a weight is NaN/inf (call before saving a checkpoint)."""
        with torch.no_grad():
            for depth, params in self._by_depth.items():
                if not all(bool(torch.isfinite(p).all()) for _, p in params):
                    self._nonfinite(step, f"depth {depth}: weights are non-finite before a checkpoint save",
                                    "a non-finite gradient applied since the last measurement")

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
