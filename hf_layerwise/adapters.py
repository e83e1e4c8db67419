"""PEFT adapters (LoRA and the other tuner methods): which parameters an adapter method trains, LoRA+'s B matrices,
and a depth-dependent LoRA rank through PEFT's own ``rank_pattern``.

A PEFT-wrapped model keeps its depths: an adapter parameter sits inside the module it adapts, so the layer map gives
it that module's depth (``base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight`` is depth 4) and
``top_k``, ``layer_decay``, ``freeze_below``, weight decay and clipping apply to adapters as to any parameter. The
base weights PEFT froze stay frozen whatever the config says (:attr:`~hf_layerwise.LayerMap.adapter_frozen`): they
never join the optimizer, so they hold no optimizer state. ``peft`` is optional (``pip install 'hf-layerwise[peft]'``)
and only imported for a model that is a PEFT model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import nn

__all__ = ["is_peft_model", "adapter_trained_parameters", "is_lora_b", "depth_rank_pattern", "add_lora"]

# PEFT names LoRA's second (output-side) matrices so; LoRA+ (Hayou et al. 2024) trains them at ratio x the LR of A
_LORA_B = re.compile(r"(^|\.)lora_(embedding_)?B(\.|$)")


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` (or the model a DDP / ``torch.compile`` wrapper holds) is a PEFT model."""
    while True:
        if hasattr(model, "peft_config") and hasattr(model, "base_model"):
            return True
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return False
        model = inner


def adapter_trained_parameters(model: nn.Module) -> set[int] | None:
    """The ``id`` of every parameter the PEFT method of ``model`` trains (adapter matrices, ``modules_to_save``
    copies, trainable tokens); ``None`` when ``model`` is not a PEFT model (every parameter may train).

    Read from PEFT's own module types (``BaseTunerLayer.adapter_layer_names``, ``AuxiliaryTrainingWrapper``), not from
    ``requires_grad``, which freezing changes.

    Raises:
        UnsupportedModelError: a prompt-learning method (prefix/prompt tuning): its virtual tokens have no depth.
    """
    if not is_peft_model(model):
        return None
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    from .layers import UnsupportedModelError

    configs = getattr(model, "peft_config", None) or getattr(getattr(model, "module", None), "peft_config", {})
    prompt = [name for name, c in configs.items() if getattr(c, "is_prompt_learning", False)]
    if prompt:
        raise UnsupportedModelError(
            f"the PEFT adapter(s) {prompt} use prompt learning ({configs[prompt[0]].peft_type}): their virtual tokens "
            "sit before the first block and have no depth, so layer-wise rates do not apply; use LoRA (or another "
            "tuner method that adapts the model's own modules)")
    trained: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                holder = getattr(module, attr, None)
                if isinstance(holder, nn.Module):
                    trained.update(id(p) for p in holder.parameters())
        elif isinstance(module, AuxiliaryTrainingWrapper):
            original = getattr(module, "original_module", None)
            kept = {id(p) for p in original.parameters()} if isinstance(original, nn.Module) else set()
            trained.update(id(p) for p in module.parameters() if id(p) not in kept)
    return trained


def add_lora(model: nn.Module, r: int, alpha: float | None = None, dropout: float | None = None,
             target_modules: list[str] | None = None) -> nn.Module:
    """``model`` (a ``*ForSequenceClassification``) wrapped by PEFT with LoRA adapters of rank ``r`` (alpha 2r and
    dropout 0.05 by default; ``target_modules`` None: PEFT's default for the architecture), the head trained whole
    (PEFT's ``SEQ_CLS`` task), as the recipes' ``--lora_r`` and ``describe --lora-r`` do.

    Raises:
        ImportError: peft is not installed (the message says how to install it).
        ValueError: PEFT cannot place the adapters; the message names the model's linear modules.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("LoRA needs the peft package: pip install 'hf-layerwise[peft]'") from None
    config = LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r,
                        lora_dropout=dropout if dropout is not None else 0.05, target_modules=target_modules,
                        task_type="SEQ_CLS")
    try:
        return get_peft_model(model, config)
    except (ValueError, KeyError) as err:  # target modules not found, or no default for this architecture
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"PEFT cannot place LoRA adapters on {type(model).__name__}: {reason}; its linear modules "
                         f"are named {', '.join(linear[:12])}") from None


def is_lora_b(name: str) -> bool:
    """Whether the parameter ``name`` is a LoRA B matrix (``lora_B`` / ``lora_embedding_B``), the one LoRA+ speeds up.

    Example:
        >>> is_lora_b("base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight")
        True
    """
    return bool(_LORA_B.search(name))


def depth_rank_pattern(model: nn.Module, ranks: Mapping[int, int]) -> dict[str, int]:
    """A LoRA ``rank_pattern`` giving the target modules of block depth ``d`` (1..L) the rank ``ranks[d]``: pass it
    to ``peft.LoraConfig(rank_pattern=...)`` (with ``r`` for the depths not listed). ``model`` is the model before
    ``get_peft_model``; the keys are PEFT's regular expressions, matched against the module names.

    Example:
        >>> L = discover_layers(model).num_layers                                           # doctest: +SKIP
        >>> pattern = depth_rank_pattern(model, {d: 16 for d in range(L - 2, L + 1)})   # top 3 blocks at rank 16
        >>> config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], rank_pattern=pattern)

    Raises:
        ValueError: a depth outside 1..L (the embeddings and the head are not blocks), or a rank < 1.
    """
    from .layers import discover_layers

    layers = discover_layers(model)
    bad = {d: r for d, r in ranks.items() if not (isinstance(d, int) and 1 <= d <= layers.num_layers)}
    if bad:
        raise ValueError(f"depth_rank_pattern: depths {sorted(bad)} are not blocks; the model's blocks are depths "
                         f"1..{layers.num_layers}")
    low = {d: r for d, r in ranks.items() if not (isinstance(r, int) and not isinstance(r, bool) and r >= 1)}
    if low:
        raise ValueError(f"depth_rank_pattern: ranks must be integers >= 1, got {low}")
    prefix = re.escape(layers.block_path)
    return {rf"{prefix}\.{d - 1}\..*": r for d, r in sorted(ranks.items())}
