"""From GLUE examples to model inputs and back: tokenization (dynamic padding) and predictions from logits."""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
import torch

from .data import GlueTask

__all__ = ["tokenize_glue", "predictions"]


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
