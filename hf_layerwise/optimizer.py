"""The layer-wise AdamW factory: one walk over the named parameters, named groups out."""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import torch
from torch import nn

from .adapters import is_lora_b
from .config import LayerwiseConfig
from .freezing import set_stage
from .layers import LayerMap, discover_layers

__all__ = ["param_groups", "create_optimizer", "no_weight_decay_names", "group_name", "param_group_mismatch",
           "inner_optimizer"]

# Last component of a module path that names a normalization layer: LayerNorm, layer_norm,
# rms_norm, norm, final_norm, norm1, ln_1, ln_f, ...
_NORM_NAME = re.compile(r"^(.*layer_?norm|.*rms_?norm|norm\d*|.*_norm\d*|ln(_\w+)?)$", re.I)


def _is_norm_module(module: nn.Module) -> bool:
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
        return True
    rms = getattr(nn, "RMSNorm", None)
    if rms is not None and isinstance(module, rms):
        return True
    # LlamaRMSNorm, T5LayerNorm, DebertaLayerNorm, ...: not nn.LayerNorm subclasses, named like one.
    cls = type(module).__name__.lower()
    return cls.endswith("norm") or "layernorm" in cls or "rmsnorm" in cls


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay: biases and normalization weights.

    Normalization layers are found by module type (``nn.LayerNorm``, ``nn.RMSNorm`` and any
    ``*Norm`` class such as ``LlamaRMSNorm``) and, as a fallback, by name (``LayerNorm``,
    ``layer_norm``, ``norm``, ``ln_1``...), so it works whatever a model calls its norms.

    Example:
        >>> sorted(no_weight_decay_names(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))))
        ['0.bias', '1.bias', '1.weight']
    """
    names = set()
    for module_name, module in model.named_modules():
        is_norm = _is_norm_module(module) or bool(_NORM_NAME.match(module_name.rsplit(".", 1)[-1]))
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm or param_name == "bias" or param_name.endswith("_bias"):
                names.add(full)
    return names


def _depth_label(depths: list[int]) -> str:
    """[0, 1, 2, 3, 7] -> 'depth0-3,7'."""
    runs: list[list[int]] = []
    for d in sorted(depths):
        if runs and d == runs[-1][-1] + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    return "depth" + ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def group_name(depths: list[int], decay: bool, lora_b: bool = False) -> str:
    """``depth0-3,7.decay``; LoRA+'s faster B matrices get their own groups, ``depth4.decay.lora_B``."""
    return f"{_depth_label(depths)}.{'decay' if decay else 'no_decay'}{'.lora_B' if lora_b else ''}"


def check_model_fit(cfg: LayerwiseConfig, layers: LayerMap, model: nn.Module) -> None:
    """The checks of ``cfg`` that need the model beyond its number of blocks: tied embeddings and LoRA+.

    Raises:
        ValueError: the config freezes the embeddings while they are tied to the output head (one parameter: the
            head would be frozen too), or ``loraplus_ratio`` is set on a model without LoRA B matrices.
    """
    trained_tied = [n for n in layers.tied if layers.can_train(n)]
    if trained_tied and cfg.frozen_below(layers.num_layers) >= 0:
        raise ValueError(
            f"{type(model).__name__} ties its input embeddings to its output head ({trained_tied[0]} is both), and "
            "this config freezes the embeddings (freeze_below / freeze_fraction / freeze_embeddings), which would "
            "freeze the head too. hf-layerwise trains a tied embedding at the head's depth: untie them "
            "(config.tie_word_embeddings=False before loading) to freeze only the embeddings, or keep them training")
    if cfg.loraplus_ratio is not None and not any(is_lora_b(n) for n in layers.depths if layers.can_train(n)):
        raise ValueError(f"LayerwiseConfig.loraplus_ratio={cfg.loraplus_ratio} speeds up LoRA B matrices, and "
                         f"{type(model).__name__} has none: wrap it with peft (LoraConfig), or set loraplus_ratio=None")


def param_groups(
    model: nn.Module,
    cfg: LayerwiseConfig,
    lr: float,
    layers: LayerMap | None = None,
) -> list[dict[str, Any]]:
    """The AdamW parameter groups that :func:`create_optimizer` uses.

    Walks ``model.named_parameters()`` once. A parameter joins the optimizer when it trains at
    some point of the run (statically frozen ones are left out, so they hold no optimizer
    state); parameters with the same LR multiplier, weight decay and unfreezing stage share a
    group. Each group carries ``name`` (e.g. ``depth7.decay``), ``depths``, ``lr_scale`` (its LR
    divided by ``lr``) and ``unfreeze_stage``.

    Example:
        >>> groups = param_groups(model, LayerwiseConfig.preset("top3x5"), lr=2e-5)   # doctest: +SKIP
        >>> [(g["name"], g["lr"]) for g in groups]
        [('depth0-3,7.decay', 2e-05), ('depth0-3,7.no_decay', 2e-05), ('depth4-6.decay', 0.0001), ...]

    Raises:
        ValueError: ``lr`` is not positive, ``cfg`` does not fit the model (``top_k`` or
            ``freeze_below`` larger than the number of blocks), or nothing would train.
    """
    if not lr > 0:
        raise ValueError(f"lr={lr!r}: the base learning rate must be > 0")
    layers = layers or discover_layers(model)
    num_layers = layers.num_layers
    cfg.validate_for(num_layers)
    check_model_fit(cfg, layers, model)
    no_decay = no_weight_decay_names(model)

    groups: dict[tuple[float, bool, int, bool], dict[str, Any]] = {}
    for name, param, depth in layers.named_depths(model):
        if not cfg.is_trainable(depth, num_layers) or not layers.can_train(name):
            continue
        lora_b = cfg.loraplus_ratio is not None and is_lora_b(name)
        scale = cfg.lr_multiplier(depth, num_layers) * (cfg.loraplus_ratio if lora_b else 1.0)
        decay = name not in no_decay and cfg.weight_decay > 0
        stage = cfg.unfreeze_stage(depth, num_layers)
        group = groups.setdefault(
            (scale, decay, stage, lora_b),
            {"params": [], "lr": lr * scale, "weight_decay": cfg.weight_decay if decay else 0.0,
             "lr_scale": scale, "depths": [], "unfreeze_stage": stage, "decay": decay, "lora_b": lora_b},
        )
        group["params"].append(param)
        if depth not in group["depths"]:
            group["depths"].append(depth)
    if not groups:
        raise ValueError(
            f"LayerwiseConfig freezes every parameter of {type(model).__name__} (freeze_below="
            f"{cfg.frozen_below(num_layers)} of {num_layers} blocks and no parameters after the encoder): "
            "nothing would train; lower freeze_below"
        )
    ordered = sorted(groups.values(), key=lambda g: (min(g["depths"]), g["lora_b"], not g["decay"]))
    for group in ordered:
        group["depths"].sort()
        group["name"] = group_name(group["depths"], group.pop("decay"), group["lora_b"])
    return ordered


def create_optimizer(
    model: nn.Module,
    cfg: LayerwiseConfig,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    layers: LayerMap | None = None,
    stage: int = 0,
    **adamw_kwargs: Any,
) -> torch.optim.AdamW:
    """A ready ``torch.optim.AdamW`` with layer-wise groups; also freezes what ``cfg`` freezes at ``stage``.

    The one route to the layer-wise AdamW: accelerate loops call it directly, ``LayerwiseTrainer`` through
    :meth:`~hf_layerwise.LayerwiseCallback.build_optimizer`. Frozen parameters get ``requires_grad=False`` (so
    backward stops at the first trainable block). With gradual unfreezing, the groups of later stages are already
    in the optimizer and simply receive no gradient until :class:`~hf_layerwise.GradualUnfreezer` unfreezes them;
    ``stage`` is the gradual-unfreezing stage to start at (a resumed run's). ``adamw_kwargs`` go to AdamW
    (``fused=True`` on CUDA, for instance). Parameters frozen by hand (``requires_grad=False``) that the config
    trains are unfrozen with a warning naming them: the config is the one place that says what trains.

    Example:
        >>> opt = create_optimizer(model, LayerwiseConfig(freeze_below=3), lr=2e-5)   # doctest: +SKIP
        >>> opt.param_groups[0]["name"]
        'depth4.decay'
    """
    layers = layers or discover_layers(model)
    groups = param_groups(model, cfg, lr, layers=layers)
    hand = [name for name, param, depth in layers.named_depths(model)
            if not param.requires_grad and cfg.is_trainable(depth, layers.num_layers, stage)
            and layers.can_train(name)]
    if hand:  # the config decides what trains: say so rather than undo the user's freezing silently
        warnings.warn(f"create_optimizer: {len(hand)} parameter(s) had requires_grad=False but the layer-wise config "
                      f"trains them, so they are unfrozen: {', '.join(hand[:5])}{' ...' if len(hand) > 5 else ''}. "
                      "Freeze through the config (freeze_below, freeze_fraction, freeze_embeddings) to keep them "
                      "frozen", stacklevel=2)
    set_stage(model, cfg, layers, stage=stage)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **adamw_kwargs)


def inner_optimizer(optimizer: Any) -> Any:
    """The optimizer an engine actually steps: the innermost ``.optimizer`` of accelerate's ``AcceleratedOptimizer``
    or a DeepSpeed wrapper (``optimizer`` itself when unwrapped)."""
    while hasattr(optimizer, "optimizer") and hasattr(optimizer.optimizer, "param_groups"):
        optimizer = optimizer.optimizer
    return optimizer


def param_group_mismatch(optimizer: Any, model: nn.Module, cfg: LayerwiseConfig, lr: float,
                         layers: LayerMap | None = None) -> str | None:
    """Why the optimizer that will actually step does not hold ``cfg``'s layer-wise groups at base ``lr``, or None.

    ``optimizer`` may be wrapped (accelerate's ``AcceleratedOptimizer``, a DeepSpeed ZeRO optimizer): the innermost
    ``.optimizer`` is read, because that is the one the engine steps. Compared: the group names in order and each
    group's base learning rate (``initial_lr`` once a scheduler is attached), not parameter identities, which FSDP and
    DeepSpeed replace. Detects a plain Trainer's default groups, a replaced optimizer, and an engine that merged groups
    or lost their learning rates.

    Example:
        >>> model, optimizer = accelerator.prepare(model, optimizer)              # doctest: +SKIP
        >>> assert param_group_mismatch(optimizer, model, cfg, lr=2e-5) is None
    """
    inner = inner_optimizer(optimizer)
    want = [(g["name"], g["lr"]) for g in param_groups(model, cfg, lr, layers=layers)]
    got = [(g.get("name"), float(g.get("initial_lr", g["lr"]))) for g in getattr(inner, "param_groups", [])]
    if [n for n, _ in got] != [n for n, _ in want]:
        return (f"{type(inner).__name__} holds {len(got)} group(s) {[n for n, _ in got]}, the layer-wise config "
                f"asks for {len(want)}: {[n for n, _ in want]}")
    wrong = [f"{n} {a:.3g} (asked {b:.3g})" for (n, a), (_, b) in zip(got, want) if not math.isclose(a, b, rel_tol=1e-6)]
    if wrong:
        return f"{type(inner).__name__} steps other learning rates: {', '.join(wrong)}"
    return None
