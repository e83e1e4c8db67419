"""GLUE dev metrics as a local `evaluate` module (the hub's ``evaluate.load("glue", ...)`` needs a download).

Load it with ``hf_layerwise.glue.load_metric(task)`` or ``evaluate.load(<this folder>, config_name=task)``.
CoLA: Matthews correlation; STS-B: Pearson and Spearman; MRPC and QQP: F1 and accuracy; the others: accuracy.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

_DESCRIPTION = "Official GLUE dev-set metrics (same definitions as the hub 'glue' metric)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted labels (class ids; floats for stsb).
    references: gold labels.
Returns: a dict with 'matthews_correlation' (cola), 'pearson' and 'spearmanr' (stsb), 'f1' and
'accuracy' (mrpc, qqp), or 'accuracy' (sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli, hans).
Example:
    >>> metric = evaluate.load("path/to/glue_metric", "mrpc")
    >>> metric.compute(predictions=[0, 1], references=[0, 1])
    {'accuracy': 1.0, 'f1': 1.0}
"""
_TASKS = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli",
          "hans"]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GlueMetric(evaluate.Metric):
    def _info(self):
        if self.config_name not in _TASKS:
            raise KeyError(f"Unknown GLUE task {self.config_name!r}; use one of {_TASKS}")
        kind = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Wang et al. 2019, GLUE: A Multi-Task Benchmark and Analysis Platform for NLU",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(kind), "references": datasets.Value(kind)}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if self.config_name == "cola":
            return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
        if self.config_name == "stsb":
            return {"pearson": float(pearsonr(predictions, references)[0]),
                    "spearmanr": float(spearmanr(predictions, references)[0])}
        accuracy = float((predictions == references).mean())
        if self.config_name in ("mrpc", "qqp"):
            return {"accuracy": accuracy, "f1": float(f1_score(references, predictions))}
        return {"accuracy": accuracy}
