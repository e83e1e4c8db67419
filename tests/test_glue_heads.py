import math

import pytest
import torch
from conftest import tiny_model

from hf_layerwise.glue.heads import class_weights, head_linear, init_head_bias_prior, reinit_top_layers


def test_class_weights_balance_classes():
    w = class_weights([0, 0, 0, 1], 2)
    assert w.tolist() == pytest.approx([4 / 6, 4 / 2])
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] never occur"):
        class_weights([0, 1], 3)


def test_head_bias_prior():
    model = tiny_model("roberta", num_labels=3)
    init_head_bias_prior(model, [0] * 6 + [1] * 3 + [2] * 0, 3)
    bias = head_linear(model, 3).bias
    assert head_linear(model, 3) is model.classifier.out_proj
    assert torch.softmax(bias, 0).tolist() == pytest.approx([7 / 12, 4 / 12, 1 / 12])


def test_reinit_top_layers_after_from_pretrained(tmp_path):
    from transformers import AutoModelForSequenceClassification

    tiny_model("bert").save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert reinit_top_layers(model, 2) == ["bert.encoder.layer.2", "bert.encoder.layer.3"]
    for n, p in model.named_parameters():
        top = any(f"layer.{i}." in n for i in (2, 3))
        if top and n.endswith("dense.weight"):
            assert not torch.equal(p, before[n]), n
            assert p.std().item() == pytest.approx(model.config.initializer_range, rel=0.3)
        elif not top:
            assert torch.equal(p, before[n]), n
    with pytest.raises(ValueError, match="larger than the model's 4 encoder blocks"):
        reinit_top_layers(model, 5)
    assert not math.isnan(sum(p.sum().item() for p in model.parameters()))
