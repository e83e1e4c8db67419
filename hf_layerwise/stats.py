"""Per-depth figures for logging: learning rate, gradient norm, trainable parameters."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .layers import LayerMap

__all__ = ["DepthGradNorms", "lr_by_depth", "scale_to_preclip", "flat_logs"]


def lr_by_depth(optimizer: torch.optim.Optimizer) -> dict[int, float]:
    """The current learning rate of every depth that has a group in ``optimizer``.

    Example:
        >>> lr_by_depth(create_optimizer(model, cfg, lr=1e-3))    # doctest: +SKIP
        {0: 0.001, 1: 0.001, ..., 4: 0.005, 5: 0.001}
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    lrs: dict[int, float] = {}
    for group in optimizer.param_groups:
        lr = group["lr"]
        lr = lr.item() if torch.is_tensor(lr) else float(lr)
        for depth in group.get("depths", ()):
            lrs[depth] = lr
    return dict(sorted(lrs.items()))


class DepthGradNorms:
    """Computes the L2 norm of the gradients of each depth in one pass.

    Built once per run (it groups the parameters by depth), called only on the steps that are
    logged, so the training steps in between pay nothing.

    Example:
        >>> norms = DepthGradNorms(model, discover_layers(model))   # doctest: +SKIP
        >>> loss.backward(); norms()
        {5: 0.71, 4: 0.33, ...}
    """

    def __init__(self, model: nn.Module, layers: LayerMap) -> None:
        self._by_depth: dict[int, list[nn.Parameter]] = {}
        for name, param in model.named_parameters():
            self._by_depth.setdefault(layers.depths[name], []).append(param)

    def __call__(self) -> dict[int, float]:
        depths, norms = [], []
        for depth, params in self._by_depth.items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                depths.append(depth)
                norms.append(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
        if not norms:
            return {}
        values = torch.stack([n.float().cpu() for n in norms]).tolist()  # one sync for all depths
        return dict(sorted(zip(depths, values)))


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
