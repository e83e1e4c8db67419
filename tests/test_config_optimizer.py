import pytest
import torch
from conftest import tiny_model
from torch import nn

from hf_layerwise import LayerwiseConfig, create_optimizer, no_weight_decay_names, param_groups
from hf_layerwise.config import PRESETS


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(top_lr_multiplier=-1.0), "top_lr_multiplier"),
        (dict(top_lr_multiplier=0.0), "top_lr_multiplier"),
        (dict(head_lr_multiplier=-2.0), "head_lr_multiplier"),
        (dict(freeze_below=-1), "freeze_below"),
        (dict(layer_decay=0.0), "layer_decay"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(max_grad_norm=0.0), "max_grad_norm"),
        (dict(unfreeze_every=-3), "unfreeze_every"),
        (dict(unfreeze_unit="minutes"), "unfreeze_unit"),
        (dict(freeze_below=2, freeze_fraction=0.5), "freeze_fraction"),
        # wrong types name the field (they were TypeErrors from a comparison, or accepted: "no" is truthy)
        (dict(freeze_fraction="0.5"), "freeze_fraction"),
        (dict(layer_decay="0.9"), "layer_decay"),
        (dict(weight_decay=None), "weight_decay"),
        (dict(max_grad_norm="1"), "max_grad_norm"),
        (dict(cache_frozen="no"), "cache_frozen"),
        (dict(freeze_embeddings=1), "freeze_embeddings"),
        (dict(top_k=True), "top_k"),
        (dict(top_k=2.0), "top_k"),
        (dict(freeze_below="3"), "freeze_below"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"LayerwiseConfig\.{field}="):
        LayerwiseConfig(**kwargs)


def test_model_dependent_errors_give_both_numbers(bert):
    with pytest.raises(ValueError, match=r"top_k=5 is larger than the model's 4 encoder blocks"):
        param_groups(bert, LayerwiseConfig(top_k=5), lr=1e-3)
    with pytest.raises(ValueError, match=r"freeze_below=6 is larger than the model's 4 encoder blocks"):
        param_groups(bert, LayerwiseConfig(freeze_below=6, top_k=0), lr=1e-3)
    with pytest.raises(ValueError, match=r"top_k=3 boosts blocks 2..4 but freeze_below=2"):
        param_groups(bert, LayerwiseConfig(freeze_below=2, top_k=3), lr=1e-3)
    with pytest.raises(ValueError, match="lr=0"):
        param_groups(bert, LayerwiseConfig(), lr=0)


def test_everything_frozen_is_refused():
    from transformers import BertModel

    base = BertModel(tiny_model("bert").config)
    base.pooler = None
    with pytest.raises(ValueError, match="freezes every parameter"):
        param_groups(base, LayerwiseConfig(freeze_below=4, top_k=0), lr=1e-3)


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="known presets: baseline, top3x5, top3x10, top3x5-freeze, llrd-0.95"):
        LayerwiseConfig.preset("top3x50")


def test_multiplier_warning_outside_usual_range():
    with pytest.warns(UserWarning, match="outside the usual 1..20"):
        LayerwiseConfig(top_lr_multiplier=50.0)


def test_presets():
    assert set(PRESETS) == {"baseline", "top3x5", "top3x10", "top3x5-freeze", "llrd-0.95", "llrd-0.8", "ulmfit"}
    assert LayerwiseConfig.preset("top3x5", weight_decay=0.0).weight_decay == 0.0
    model = tiny_model("minilm")  # 6 blocks
    groups = param_groups(model, LayerwiseConfig.preset("baseline"), lr=2e-5)
    assert [g["name"] for g in groups] == ["depth0-7.decay", "depth0-7.no_decay"]  # what the Trainer does
    frozen = param_groups(model, LayerwiseConfig.preset("top3x5-freeze"), lr=2e-5)
    assert {d for g in frozen for d in g["depths"]} == {4, 5, 6, 7}
    assert {g["name"]: g["lr_scale"] for g in frozen} == {
        "depth4-6.decay": 5.0, "depth4-6.no_decay": 5.0, "depth7.decay": 1.0, "depth7.no_decay": 1.0}


def test_lr_multipliers_top_k_layer_decay_head():
    cfg = LayerwiseConfig(top_k=2, top_lr_multiplier=10.0, layer_decay=0.5, head_lr_multiplier=3.0)
    L = 4
    assert [cfg.lr_multiplier(d, L) for d in range(L + 2)] == [
        0.5**5, 0.5**4, 0.5**3, 0.5**2 * 10, 0.5 * 10, 3.0]
    groups = param_groups(tiny_model("bert"), cfg, lr=1e-3)
    for g in groups:
        assert len(g["depths"]) == 1
        assert g["lr"] == pytest.approx(1e-3 * cfg.lr_multiplier(g["depths"][0], L))


def test_weight_decay_by_module_type_and_name():
    class Odd(nn.Module):  # norms with names no pattern knows, and a custom RMSNorm class
        def __init__(self):
            super().__init__()
            self.first = nn.LayerNorm(4)
            self.proj = nn.Linear(4, 4)
            self.second = type("MyRMSNorm", (nn.Module,), {})()
            self.second.weight = nn.Parameter(torch.ones(4))
            self.rms = nn.RMSNorm(4)
            self.ln_f = nn.Linear(4, 4, bias=False)  # GPT-style name of a norm

    assert no_weight_decay_names(Odd()) == {"first.weight", "first.bias", "proj.bias", "second.weight",
                                            "rms.weight", "ln_f.weight"}
    model = tiny_model("bert")
    groups = param_groups(model, LayerwiseConfig(top_k=0), lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            no_decay = n.endswith("bias") or "LayerNorm" in n
            assert g["weight_decay"] == (0.0 if no_decay else 0.01), n


def test_create_optimizer_freezes_and_excludes_frozen(bert):
    opt = create_optimizer(bert, LayerwiseConfig(freeze_below=2, top_k=2, top_lr_multiplier=5.0), lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for n, p in bert.named_parameters():
        frozen = n.startswith("bert.embeddings") or any(f"layer.{i}." in n for i in (0, 1))
        assert p.requires_grad is not frozen, n
        assert (id(p) in in_opt) is not frozen, n
    assert [g["name"] for g in opt.param_groups] == [
        "depth3-4.decay", "depth3-4.no_decay", "depth5.decay", "depth5.no_decay"]


def test_each_parameter_in_exactly_one_group():
    model = tiny_model("deberta-v2")
    groups = param_groups(model, LayerwiseConfig.preset("llrd-0.8"), lr=1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_create_optimizer_says_when_it_unfreezes_parameters_frozen_by_hand(bert):
    bert.bert.encoder.layer[3].output.dense.weight.requires_grad_(False)  # the user froze it; the config trains it
    with pytest.warns(UserWarning, match=r"1 parameter\(s\) had requires_grad=False .*layer\.3\.output\.dense\.weight"):
        create_optimizer(bert, LayerwiseConfig(freeze_below=2, top_k=2), lr=1e-3)
    assert bert.bert.encoder.layer[3].output.dense.weight.requires_grad
    import warnings

    with warnings.catch_warnings():  # frozen by the config: no warning the second time
        warnings.simplefilter("error")
        create_optimizer(bert, LayerwiseConfig(freeze_below=2, top_k=2), lr=1e-3)


def test_freeze_fraction_that_freezes_no_block_is_refused(bert):
    with pytest.raises(ValueError, match=r"freeze_fraction=0.2 of the model's 4 encoder blocks freezes none"):
        LayerwiseConfig(freeze_fraction=0.2).validate_for(4)
