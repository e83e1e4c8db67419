import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from hf_layerwise.glue import load_metric


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn_scipy(seed):
    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert load_metric("cola").compute(predictions=p, references=y) == pytest.approx(
        {"matthews_correlation": matthews_corrcoef(y, p)})
    for task in ("mrpc", "qqp"):
        assert load_metric(task).compute(predictions=p, references=y) == pytest.approx(
            {"accuracy": accuracy_score(y, p), "f1": f1_score(y, p)})
    y3, p3 = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    for task in ("sst2", "mnli", "qnli", "rte", "wnli"):
        assert load_metric(task).compute(predictions=p3, references=y3) == pytest.approx(
            {"accuracy": accuracy_score(y3, p3)})
    ys, ps = rng.uniform(0, 5, 100), rng.uniform(0, 5, 100)
    assert load_metric("stsb").compute(predictions=ps, references=ys) == pytest.approx(
        {"pearson": pearsonr(ps, ys)[0], "spearmanr": spearmanr(ps, ys)[0]}, rel=1e-5)
