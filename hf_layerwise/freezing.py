"""Freezing and gradual unfreezing as small explicit operations (after Lightning's ``BaseFinetuning``).

A frozen parameter has ``requires_grad=False``. Because the inputs of a BERT-style model carry
no gradient, backward then stops at the first trainable block: no gradient, no activation kept
for backward and no optimizer state below it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from .config import LayerwiseConfig
from .layers import LayerMap, discover_layers

__all__ = ["freeze", "unfreeze", "set_stage", "GradualUnfreezer"]

logger = logging.getLogger(__name__)


def freeze(params: Iterable[nn.Parameter]) -> None:
    """Stop training ``params``: ``requires_grad=False`` and any stale gradient dropped."""
    for p in params:
        p.requires_grad_(False)
        p.grad = None


def unfreeze(params: Iterable[nn.Parameter]) -> None:
    """Train ``params`` again."""
    for p in params:
        p.requires_grad_(True)


def set_stage(model: nn.Module, cfg: LayerwiseConfig, layers: LayerMap, stage: int) -> list[int]:
    """Freeze/unfreeze every parameter of ``model`` as ``cfg`` says for gradual-unfreezing ``stage``.

    Returns the depths that became trainable. Without gradual unfreezing every stage is the same.

    Example:
        >>> set_stage(model, LayerwiseConfig(freeze_below=2), discover_layers(model), stage=0)  # doctest: +SKIP
        [3, 4, 5]
    """
    num_layers = layers.num_layers
    to_freeze, to_unfreeze, opened = [], [], set()
    for name, param, depth in layers.named_depths(model):
        if cfg.is_trainable(depth, num_layers, stage) and layers.can_train(name):
            if not param.requires_grad:
                to_unfreeze.append(param)
                opened.add(depth)
        elif param.requires_grad:
            to_freeze.append(param)
    freeze(to_freeze)
    unfreeze(to_unfreeze)
    return sorted(opened)


class GradualUnfreezer:
    """Applies ``cfg``'s freezing to ``model`` and moves it through the gradual-unfreezing stages.

    Use one per run. Call :meth:`update` at the start of every optimizer step (and epoch) with
    the step count and epoch; it unfreezes the next depth when its time has come. It is
    stateless apart from the model: the stage is derived from ``(step, epoch)``, so a resumed run
    lands on the same stage.

    Under DDP, call :meth:`attach_distributed` once right after the model is wrapped: DDP only
    all-reduces the parameters that required gradients when it was built, so the parameters
    unfrozen later get their gradients averaged by a hook here instead of silently training a
    different copy on every rank.

    Example:
        >>> unfreezer = GradualUnfreezer(model, LayerwiseConfig.preset("ulmfit"))   # doctest: +SKIP
        >>> for epoch in range(3):
        ...     unfreezer.update(step=global_step, epoch=epoch)
        ...     train_one_epoch()
    """

    def __init__(self, model: nn.Module, cfg: LayerwiseConfig, layers: LayerMap | None = None) -> None:
        self.model = model
        self.cfg = cfg
        self.layers = layers or discover_layers(model)
        cfg.validate_for(self.layers.num_layers)
        self.stage: int | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._outside_ddp: set[int] = set()  # frozen when DDP wrapped the model, trainable later

    def update(self, step: int, epoch: int) -> list[int]:
        """Bring the model to the stage of ``(step, epoch)``; return the depths newly unfrozen."""
        stage = self.cfg.stage_at(step, epoch)
        if stage == self.stage:
            return []
        self.stage = stage
        opened = set_stage(self.model, self.cfg, self.layers, stage)
        if self._outside_ddp:
            self._hook_new_params()
        if opened and self.cfg.unfreeze_every:
            logger.info("gradual unfreezing: stage %d, depths %s now train", stage, opened)
        return opened

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def attach_distributed(self) -> int:
        """Average, across ranks, the gradients of parameters that DDP does not reduce.

        Call right after the model is wrapped in DDP: the parameters frozen now but unfrozen
        later get a gradient hook (when they unfreeze) that all-reduces their gradient. Returns
        how many parameters are covered (0 without a multi-process group or gradual unfreezing).
        """
        if not (self.cfg.unfreeze_every and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return 0
        num_layers = self.layers.num_layers
        self._outside_ddp = {
            id(p) for name, p, depth in self.layers.named_depths(self.model)
            if not p.requires_grad and self.cfg.is_trainable(depth, num_layers) and self.layers.can_train(name)
        }
        self._hook_new_params()
        return len(self._outside_ddp)

    def _hook_new_params(self) -> None:
        world = dist.get_world_size()

        def average(param: torch.Tensor) -> None:
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.div_(world)

        for param in self.model.parameters():
            if id(param) in self._outside_ddp and param.requires_grad:
                self._outside_ddp.discard(id(param))
                self._hooks.append(param.register_post_accumulate_grad_hook(average))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._outside_ddp.clear()
