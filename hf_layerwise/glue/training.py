"""The pieces of GLUE fine-tuning the two recipes share: tokenization, predictions, the fine-tuning
options users expect (class weights, head-bias prior, re-initialized top blocks), and atomic files."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from ..layers import discover_layers
from .data import GlueTask

__all__ = ["tokenize_glue", "predictions", "majority_metrics", "class_weights", "init_head_bias_prior",
           "reinit_top_layers", "write_json_atomic", "head_linear"]


def tokenize_glue(raw: datasets.DatasetDict, tokenizer: Any, task: GlueTask, max_seq_length: int,
                  pad_to_max_length: bool = False) -> datasets.DatasetDict:
    """Tokenize every split: ``input_ids``, ``attention_mask`` (``token_type_ids``) and ``labels``.

    Without ``pad_to_max_length`` nothing is padded here: the collator pads each batch (dynamic padding).
    """
    def encode(batch: dict[str, list]) -> dict[str, list]:
        texts = [batch[k] for k in task.text_keys]
        out = tokenizer(*texts, truncation=True, max_length=max_seq_length,
                        padding="max_length" if pad_to_max_length else False)
        out["labels"] = batch["label"]
        return out

    drop = [c for c in raw[next(iter(raw))].column_names if c != "idx"]
    return raw.map(encode, batched=True, remove_columns=drop, desc="tokenize")


def predictions(task: GlueTask, logits: torch.Tensor) -> np.ndarray:
    """Class ids (argmax) or, for STS-B, the regression output."""
    logits = logits.float().cpu()
    return logits.squeeze(-1).numpy() if task.is_regression else logits.argmax(-1).numpy()


def majority_metrics(task: GlueTask, train_labels: list, eval_labels: list, metric: Any) -> dict[str, float]:
    """Dev metrics of always predicting the training set's majority class (Mosbach et al. 2021's failed-run
    threshold). For STS-B, a constant prediction has no correlation: 0."""
    if task.is_regression:
        return {"pearson": 0.0, "spearmanr": 0.0}
    majority = Counter(train_labels).most_common(1)[0][0]
    result = metric.compute(predictions=[majority] * len(eval_labels), references=eval_labels)
    return {k: (0.0 if isinstance(v, float) and math.isnan(v) else float(v)) for k, v in result.items()}


def class_weights(labels: list[int], num_labels: int) -> torch.Tensor:
    """Weights ``n / (k * count_c)`` for weighted cross-entropy (balanced classes weigh 1)."""
    counts = torch.bincount(torch.as_tensor(labels), minlength=num_labels).float()
    if (counts == 0).any():
        raise ValueError(f"--class_weights auto: class(es) {torch.nonzero(counts == 0).flatten().tolist()} never "
                         "occur in the training data")
    return counts.sum() / (num_labels * counts)


def head_linear(model: nn.Module, num_labels: int) -> nn.Linear:
    """The output layer of the classification head: the last ``nn.Linear`` after the encoder with ``num_labels`` outputs."""
    layers = discover_layers(model)
    head = [n for n, d in layers.depths.items() if d == layers.head_depth]
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
    blocks = model.get_submodule(layers.block_path)
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


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON so that a reader never sees a partial file (temporary file, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
