"""Per-depth figures for logging: learning rate, gradient norm, trainable parameters."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .layers import LayerMap

__all__ = ["DepthGradNorms", "lr_by_depth", "scale_to_preclip", "flat_logs", "local_part", "is_sharded",
           "sum_over_shards"]


def lr_by_depth(optimizer: torch.optim.Optimizer) -> dict[int, float]:
    """The current learning rate of every depth that has a group in ``optimizer``.

    Example:
        >>> lr_by_depth(create_optimizer(model, cfg, lr=1e-3))    # doctest: +SKIP
        {0: 0.001, 1: 0.001, ..., 4: 0.005, 5: 0.001}
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    lrs: dict[int, float] = {}
    for group in optimizer.param_groups:
        if group.get("lora_b"):
            continue  # LoRA+: a depth's B matrices train at loraplus_ratio x its LR, which is the one reported
        lr = group["lr"]
        lr = lr.item() if torch.is_tensor(lr) else float(lr)
        for depth in group.get("depths", ()):
            lrs[depth] = lr
    return dict(sorted(lrs.items()))


_SUM_DTYPE = torch.float64  # squared norms and counts: no overflow for large norms, exact counts


def local_part(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this process holds: an FSDP2 DTensor's local shard, the tensor itself otherwise (FSDP1
    with ``use_orig_params=True`` already exposes local views of its flat parameters)."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def is_sharded(params: Iterable[torch.Tensor]) -> bool:
    """Whether ``params`` are shards spread over the processes of the default group (FSDP1 flat-parameter views or
    FSDP2 DTensors), so that per-depth sums must be added up across processes. DDP replicas are not."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    return any(getattr(p, "_fsdp_flattened", False) or hasattr(p, "device_mesh") for p in params)


def sum_over_shards(values: torch.Tensor, sharded: bool) -> torch.Tensor:
    """``values`` (per-process partial sums) added up across processes when the parameters are sharded."""
    if sharded:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class DepthGradNorms:
    """Computes the L2 norm of the gradients of each depth in one pass.

    Built once per run (it groups the parameters by depth), called only on the steps that are
    logged, so the training steps in between pay nothing. Works on wrapped models: under FSDP1/FSDP2
    each process sums the squares of its gradient shards and one all-reduce adds them up, so every
    process gets the norms of the full gradients (under DDP the gradients are already averaged).

    Example:
        >>> norms = DepthGradNorms(model, discover_layers(model))   # doctest: +SKIP
        >>> loss.backward(); norms()
        {5: 0.71, 4: 0.33, ...}
    """

    def __init__(self, model: nn.Module, layers: LayerMap) -> None:
        self._by_depth: dict[int, list[nn.Parameter]] = {}
        for _, param, depth in layers.named_depths(model):
            self._by_depth.setdefault(depth, []).append(param)
        self._depths = sorted(self._by_depth)
        params = [p for ps in self._by_depth.values() for p in ps]
        self._sharded = is_sharded(params)
        self._device = params[0].device if params else torch.device("cpu")

    def __call__(self) -> dict[int, float]:
        squares, present = [], []
        for depth in self._depths:
            grads = [local_part(p.grad) for p in self._by_depth[depth] if p.grad is not None]
            grads = [g for g in grads if g.numel()]
            present.append(float(bool(grads)))
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0) if grads else torch.zeros((),
                                                                                                device=self._device)
            squares.append(norm.to(self._device, _SUM_DTYPE) ** 2)
        if not squares:
            return {}
        summed = sum_over_shards(torch.cat([torch.stack(squares), torch.tensor(present, dtype=_SUM_DTYPE,
                                                                               device=self._device)]),
                                 self._sharded).cpu()  # one collective and one host sync for all depths
        n = len(self._depths)
        return {d: math.sqrt(float(summed[i])) for i, d in enumerate(self._depths) if summed[n + i] > 0}


def total_norm(per_depth: dict[int, float]) -> float:
    return math.sqrt(sum(v * v for v in per_depth.values()))


def scale_to_preclip(per_depth: dict[int, float], preclip_total: float | None) -> dict[int, float]:
    """Turn norms measured after clipping into pre-clip norms.

    Clipping scales every gradient by one factor, so each depth's pre-clip norm is its post-clip
    norm times ``preclip_total / postclip_total``.
    """
    post = total_norm(per_depth)
    if preclip_total is None or post == 0 or not math.isfinite(preclip_total):
        return per_depth
    factor = preclip_total / post
    return {d: v * factor for d, v in per_depth.items()}


def flat_logs(prefix: str, values: dict[int, Any]) -> dict[str, Any]:
    return {f"{prefix}/depth{d}": v for d, v in values.items()}
