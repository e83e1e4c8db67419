"""Fine-tuning options on the model users expect from GLUE recipes: class-weighted loss, a head bias set to the class
priors, and re-initialized top blocks (Zhang et al. 2021)."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import discover_layers

__all__ = ["class_weights", "head_linear", "init_head_bias_prior", "reinit_top_layers"]


def class_weights(labels: list[int], num_labels: int) -> torch.Tensor:
    """Weights ``n / (k * count_c)`` for weighted cross-entropy (balanced classes weigh 1)."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_labels).float()
    if (counts == 0).any():
        raise ValueError(f"--class_weights auto: class(es) {torch.nonzero(counts == 0).flatten().tolist()} never "
                         "occur in the training data")
    return counts.sum() / (num_labels * counts)


def head_linear(model: nn.Module, num_labels: int) -> nn.Linear:
    """The output layer of the classification head: the last ``nn.Linear`` after the encoder with ``num_labels``
    outputs."""
    layers = discover_layers(model)
    head = {n for n, _, d in layers.named_depths(model) if d == layers.head_depth}
    candidates = [m for name, m in model.named_modules()
                  if isinstance(m, nn.Linear) and m.out_features == num_labels and f"{name}.weight" in head]
    if not candidates:
        raise ValueError(f"no nn.Linear with {num_labels} outputs found in the head of {type(model).__name__}")
    return candidates[-1]


@torch.no_grad()
def init_head_bias_prior(model: nn.Module, labels: list[int], num_labels: int) -> None:
    """Set the classifier bias to the log class priors, so the untrained head predicts the label distribution."""
    linear = head_linear(model, num_labels)
    if linear.bias is None:
        raise ValueError("--head_bias_init prior: the classifier has no bias")
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_labels).double() + 1.0  # +1: no log(0)
    linear.bias.copy_(torch.log(counts / counts.sum()).to(linear.bias.dtype))


@torch.no_grad()
def reinit_top_layers(model: nn.Module, n: int) -> list[str]:
    """Re-initialize the top ``n`` encoder blocks with the model's own initializer (Zhang et al. 2021)."""
    if n <= 0:
        return []
    layers = discover_layers(model)
    if n > layers.num_layers:
        raise ValueError(f"--reinit_top_layers {n} is larger than the model's {layers.num_layers} encoder blocks")
    init = getattr(model, "_init_weights", None)
    if init is None:
        raise ValueError(f"{type(model).__name__} has no _init_weights to re-initialize blocks with")
    blocks = layers.blocks(model)
    names = []
    for index in range(layers.num_layers - n, layers.num_layers):
        # transformers 5 marks loaded tensors and modules `_is_hf_initialized`, and its init functions then skip
        # them: clear the marks, or the "re-initialization" silently keeps the pretrained weights
        for obj in (*blocks[index].modules(), *blocks[index].parameters(), *blocks[index].buffers()):
            if getattr(obj, "_is_hf_initialized", False):
                obj._is_hf_initialized = False
        blocks[index].apply(init)
        names.append(f"{layers.block_path}.{index}")
    return names
