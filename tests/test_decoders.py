"""Decoder LLMs and PEFT LoRA (issue 28): depths of Llama / Qwen2 / Mistral / Gemma / GPT-2, tied embeddings,
refused multi-stack models, adapters at their host's depth, freezing without optimizer state, LoRA+ composed with the
depth multipliers, a depth-dependent rank through PEFT's rank_pattern, per-depth LR / grad-norm logging."""

import math

import pytest
import torch
import transformers as T
from conftest import DECODER_CONFIGS, LORA_TARGETS, tiny_decoder, tiny_lora

from hf_layerwise import LayerwiseConfig, UnsupportedModelError, create_optimizer, discover_layers, param_groups
from hf_layerwise.adapters import depth_rank_pattern, is_lora_b, is_peft_model
from hf_layerwise.stats import DepthGradNorms, lr_by_depth

pytest.importorskip("peft")

ARCHS = sorted(DECODER_CONFIGS)
HEAD = {"llama": ["model.norm.weight", "score.weight"], "qwen2": ["model.norm.weight", "score.weight"],
        "mistral": ["model.norm.weight", "score.weight"], "gemma": ["model.norm.weight", "score.weight"],
        "gpt2": ["transformer.ln_f.weight", "transformer.ln_f.bias", "score.weight"]}
EMBED = {"llama": ["model.embed_tokens.weight"], "qwen2": ["model.embed_tokens.weight"],
         "mistral": ["model.embed_tokens.weight"], "gemma": ["model.embed_tokens.weight"],
         "gpt2": ["transformer.wte.weight", "transformer.wpe.weight"]}


def _batch(seed=0, n=4, seq=6):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, 96, (n, seq), generator=g), "attention_mask": torch.ones(n, seq, dtype=torch.long),
            "labels": torch.randint(0, 2, (n,), generator=g)}


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_depths(arch):
    model = tiny_decoder(arch)
    lm = discover_layers(model)
    assert lm.num_layers == 4 and set(lm.depths) == {n for n, _ in model.named_parameters()}
    assert set(lm.depths.values()) == set(range(6)) and lm.tied == () and not lm.adapter_frozen
    for name in EMBED[arch]:
        assert lm.depths[name] == 0
    for name in HEAD[arch]:
        assert lm.depths[name] == 5
    blocks = model.get_submodule(lm.block_path)
    for i, block in enumerate(blocks):
        ids = {id(p) for p in block.parameters()}
        assert {lm.depths[n] for n, p in model.named_parameters() if id(p) in ids} == {i + 1}
    # norms get no weight decay (RMSNorm by type, GPT-2's ln_* by name), projections do
    names = {g["name"]: g for g in param_groups(model, LayerwiseConfig.preset("top3x5"), lr=1e-3)}
    no_decay = {n for g in names.values() if g["weight_decay"] == 0 for n in _names(model, g["params"])}
    assert any(("norm" in n or ".ln_" in n) and n.endswith("weight") for n in no_decay)
    assert not any(n.endswith(("q_proj.weight", "c_attn.weight")) for n in no_decay)


def _names(model, params):
    ids = {id(p) for p in params}
    return [n for n, p in model.named_parameters() if id(p) in ids]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tied_embeddings_train_at_the_head_and_freezing_them_is_refused(arch):
    model = tiny_decoder(arch, causal_lm=True, tie_word_embeddings=True)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    lm = discover_layers(model)
    tied = EMBED[arch][0]
    assert lm.tied == (tied,) and lm.depths[tied] == lm.head_depth  # one parameter, the head's depth
    groups = param_groups(model, LayerwiseConfig(top_k=3, top_lr_multiplier=5.0, head_lr_multiplier=2.0), lr=1e-3)
    [group] = [g for g in groups if any(p is model.get_input_embeddings().weight for p in g["params"])]
    assert group["depths"][-1] == lm.head_depth and group["lr"] == pytest.approx(2e-3)
    for cfg in (LayerwiseConfig(freeze_below=2, top_k=2), LayerwiseConfig(freeze_embeddings=True),
                LayerwiseConfig(freeze_fraction=0.5, top_k=2)):
        with pytest.raises(ValueError, match="ties its input embeddings to its output head"):
            create_optimizer(model, cfg, lr=1e-3)
    untied = tiny_decoder(arch, causal_lm=True, tie_word_embeddings=False)
    lm = discover_layers(untied)
    assert lm.tied == () and lm.depths[tied] == 0
    opt = create_optimizer(untied, LayerwiseConfig(freeze_below=2, top_k=2), lr=1e-3)  # untied: the embeddings freeze alone
    assert not untied.get_input_embeddings().weight.requires_grad and untied.get_output_embeddings().weight.requires_grad
    assert min(d for g in opt.param_groups for d in g["depths"]) == 3


def test_models_with_several_stacks_are_refused_naming_them():
    t5 = T.T5ForConditionalGeneration(T.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                 num_heads=4))
    with pytest.raises(UnsupportedModelError, match=r"2 stacks of blocks: encoder\.block .*decoder\.block"):
        discover_layers(t5)
    llava = T.LlavaForConditionalGeneration(T.LlavaConfig(
        vision_config=T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=8),
        text_config=T.LlamaConfig(**{**DECODER_CONFIGS["llama"]().to_dict(), "num_hidden_layers": 3})))
    with pytest.raises(UnsupportedModelError, match=r"vision_tower\.encoder\.layers .*language_model\.layers"):
        discover_layers(llava)
    discover_layers(T.T5EncoderModel(T.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                num_heads=4)))  # one stack: fine


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_adapters_take_their_host_depth_and_base_weights_stay_frozen(arch):
    model = tiny_lora(arch)
    assert is_peft_model(model)
    lm = discover_layers(model)
    adapters = [n for n in lm.depths if ".lora_" in n]
    assert len(adapters) == 4 * 2 * len(LORA_TARGETS[arch])  # A and B per target per block
    for name in adapters:
        block = int(name.split(".h." if arch == "gpt2" else ".layers.")[1].split(".")[0])
        assert lm.depths[name] == block + 1 and lm.can_train(name)
    trained = {n for n in lm.depths if lm.can_train(n)}
    assert trained == set(adapters) | {n for n in lm.depths if "modules_to_save" in n}  # + the score head copy
    assert all(".base_layer." in n or "lora_" not in n for n in lm.adapter_frozen)
    cfg = LayerwiseConfig(top_k=2, top_lr_multiplier=5.0, freeze_below=1)  # adapters of block 1 frozen
    opt = create_optimizer(model, cfg, lr=1e-3)
    in_optimizer = set(_names(model, [p for g in opt.param_groups for p in g["params"]]))
    assert in_optimizer == {n for n in trained if lm.depths[n] >= 2}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == in_optimizer
    for group in opt.param_groups:
        for depth in group["depths"]:
            assert group["lr"] == pytest.approx(1e-3 * (5.0 if depth in (3, 4) else 1.0))
    assert {g["weight_decay"] for g in opt.param_groups} == {0.01}  # LoRA matrices are weights: decayed
    # one step: base weights and the frozen block's adapters unchanged, no optimizer state for any of them
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(**_batch()).loss.backward()
    norms = DepthGradNorms(model, lm)()
    assert norms.get(1, 0.0) == 0.0 and all(norms[d] > 0 for d in (2, 3, 4, 5))  # per-depth grad norms: adapters
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= in_optimizer and any(".lora_B." in n for n in changed)
    assert {id(p) for p in opt.state} <= {id(p) for n, p in model.named_parameters() if n in in_optimizer}


def test_no_warning_for_the_base_weights_peft_froze():
    model = tiny_lora("llama")
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")  # create_optimizer warns about hand-frozen weights it trains
        create_optimizer(model, LayerwiseConfig.preset("top3x5"), lr=1e-3)
    assert not model.base_model.model.model.embed_tokens.weight.requires_grad


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loraplus_composes_with_the_depth_multipliers(arch):
    model = tiny_lora(arch)
    lm = discover_layers(model)
    cfg = LayerwiseConfig(top_k=2, top_lr_multiplier=5.0, layer_decay=0.5, loraplus_ratio=16.0)
    opt = create_optimizer(model, cfg, lr=1e-3)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        if id(param) not in by_param:
            continue
        depth, group = lm.depths[name], by_param[id(param)]
        expected = 1e-3 * cfg.lr_multiplier(depth, lm.num_layers) * (16.0 if is_lora_b(name) else 1.0)
        assert group["lr"] == pytest.approx(expected), name
        assert group["name"].endswith(".lora_B") == is_lora_b(name)
    assert lr_by_depth(opt) == pytest.approx({d: 1e-3 * cfg.lr_multiplier(d, 4) for d in range(1, 6)})
    with pytest.raises(ValueError, match="loraplus_ratio=16.0 speeds up LoRA B matrices"):
        create_optimizer(tiny_decoder(arch), LayerwiseConfig(loraplus_ratio=16.0), lr=1e-3)
    with pytest.raises(ValueError, match="loraplus_ratio"):
        LayerwiseConfig(loraplus_ratio=0.0)


def test_depth_dependent_rank_through_peft_rank_pattern():
    base = tiny_decoder("llama")
    pattern = depth_rank_pattern(base, {3: 8, 4: 16})  # the top two blocks at higher rank
    model = tiny_lora("llama", r=2, rank_pattern=pattern)
    ranks = {}
    for name, param in model.named_parameters():
        if ".lora_A." in name:
            ranks.setdefault(discover_layers(model).depths[name], set()).add(param.shape[0])
    assert ranks == {1: {2}, 2: {2}, 3: {8}, 4: {16}}
    for bad, match in (({0: 4}, "not blocks"), ({5: 4}, "not blocks"), ({2: 0}, ">= 1")):
        with pytest.raises(ValueError, match=match):
            depth_rank_pattern(base, bad)


def test_prompt_learning_is_refused():
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(tiny_decoder("llama"), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))
    with pytest.raises(UnsupportedModelError, match="prompt learning"):
        discover_layers(model)


def test_lora_training_decreases_the_loss_at_layerwise_rates():
    """A few steps of LoRA with top-2 x5 and LoRA+ on a fixed batch: the loss falls (the groups train)."""
    model = tiny_lora("qwen2")
    opt = create_optimizer(model, LayerwiseConfig(top_k=2, top_lr_multiplier=5.0, loraplus_ratio=4.0), lr=3e-3)
    batch = _batch(seed=1, n=8)
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.8 * losses[0], losses


def test_health_monitor_watches_only_what_trains_on_a_lora_model():
    """The monitor's per-depth figures cover the adapters and the head, not the base weights PEFT froze (they never
    change: watching them would cost a pass over the whole model every monitored step)."""
    from hf_layerwise import HealthConfig, HealthMonitor

    model = tiny_lora("llama")
    lm = discover_layers(model)
    opt = create_optimizer(model, LayerwiseConfig(top_k=2, top_lr_multiplier=5.0), lr=1e-3, layers=lm)
    monitor = HealthMonitor(model, HealthConfig(every_n_steps=1, histograms=False), layers=lm)
    monitor.begin(1, grad_hooks=False)
    loss = model(**_batch()).loss
    loss.backward()
    monitor.before_optimizer_step()
    opt.step()
    record = monitor.end(opt, loss.detach(), grad_norms=DepthGradNorms(model, lm)())
    monitor.close()
    norms = {k: v for k, v in record.items() if k.startswith("health/weight_norm/")}
    assert set(norms) == {f"health/weight_norm/depth{d}" for d in range(1, 6)}  # no depth 0: embeddings are base
    adapters = [p for n, p in model.named_parameters() if lm.depths[n] == 2 and lm.can_train(n)]
    assert norms["health/weight_norm/depth2"] == pytest.approx(torch.sqrt(sum((p.detach() ** 2).sum()
                                                                             for p in adapters)).item(), rel=1e-5)
