"""GLUE for the recipes: tasks and their data (``data``), the shipped metric (``load_metric``), tokenization
(``features``), fine-tuning options on the model (``heads``), command-line arguments (``arguments``), the set-up both
recipes share (``recipe``) and the output folder and checkpoints of a run (``run_dir``)."""

from __future__ import annotations

import os

from .data import TASKS, GlueDataError, GlueTask, get_task, load_glue, read_glue_tsv, read_table

METRIC_PATH = os.path.join(os.path.dirname(__file__), "glue_metric")

__all__ = ["TASKS", "GlueDataError", "GlueTask", "get_task", "load_glue", "load_metric", "read_glue_tsv",
           "read_table", "METRIC_PATH"]


def load_metric(task_name: str, **kwargs):
    """The GLUE metric of ``task_name`` as an ``evaluate`` module shipped in this package (no download).

    Example:
        >>> load_metric("cola").compute(predictions=[1, 0, 1], references=[1, 0, 0])   # doctest: +SKIP
        {'matthews_correlation': 0.5}
    """
    import evaluate

    return evaluate.load(METRIC_PATH, config_name=get_task(task_name).name, **kwargs)
