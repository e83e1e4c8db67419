import glob
import os

import pytest
import torch
from conftest import tiny_model
from trainer_run import RandomPairs
from transformers import Trainer, TrainingArguments

from hf_layerwise import (GradualUnfreezer, LayerwiseCallback, LayerwiseConfig, LayerwiseTrainer, create_optimizer,
                          discover_layers)
from hf_layerwise.callbacks import check_training_setup


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, learning_rate=1e-3,
                warmup_steps=0.34, lr_scheduler_type="linear", logging_steps=1, save_strategy="no", report_to=[],
                use_cpu=True, seed=3, disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def test_freeze_multiplier_state_and_logs(tmp_path):
    model = tiny_model("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = LayerwiseConfig(freeze_below=2, top_k=1, top_lr_multiplier=5.0)
    trainer = LayerwiseTrainer(model=model, args=_args(tmp_path, report_to=["tensorboard"]),
                               train_dataset=RandomPairs(), callbacks=[LayerwiseCallback(cfg)])
    trainer.train()
    depths = discover_layers(model).depths
    for n, p in model.named_parameters():
        if depths[n] <= 2:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
            assert p.grad is None
        else:
            assert not torch.equal(p, before[n]), f"trainable {n} did not change"
    state = trainer.optimizer.optimizer.state if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer.state
    with_state = {id(p) for p in state}
    assert with_state == {id(p) for n, p in model.named_parameters() if depths[n] > 2}
    assert all(g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups if g["name"].endswith("no_decay"))

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6
    assert logs[0]["lr/depth4"] == logs[0]["lr/depth3"] == 0.0  # linear warmup starts at 0
    lrs = [h["lr/depth4"] / h["lr/depth3"] for h in logs[1:]]
    assert lrs == pytest.approx([5.0] * 5)
    assert logs[1]["lr/depth3"] < logs[3]["lr/depth3"] > logs[-1]["lr/depth3"]  # warmup then decay
    assert logs[0]["lr/depth3"] == pytest.approx(logs[0]["learning_rate"])
    for h in logs:
        assert "lr/depth2" not in h and "grad_norm/depth1" not in h  # frozen depths have no group, no gradient
        per_depth = [h[f"grad_norm/depth{d}"] for d in (3, 4, 5)]
        assert sum(v * v for v in per_depth) ** 0.5 == pytest.approx(h["grad_norm"], rel=1e-4)
    trainable = sum(p.numel() for n, p in model.named_parameters() if depths[n] > 2)
    assert logs[0]["trainable_params"] == trainable

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = glob.glob(os.path.join(tmp_path, "runs", "**", "events.out.tfevents.*"), recursive=True)
    acc = EventAccumulator(event_file)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/lr/depth4" in tags and "train/grad_norm/depth5" in tags
    assert len(acc.Scalars("train/lr/depth4")) == 6


def test_clipping_is_applied_once_with_config_norm(tmp_path):
    model = tiny_model("bert")
    cfg = LayerwiseConfig(top_k=0, max_grad_norm=0.05)
    trainer = LayerwiseTrainer(model=model, args=_args(tmp_path, max_steps=2), train_dataset=RandomPairs(),
                               callbacks=[LayerwiseCallback(cfg)])
    assert trainer.args.max_grad_norm == 0.05
    calls = []
    original = trainer.accelerator.clip_grad_norm_
    trainer.accelerator.clip_grad_norm_ = lambda params, max_norm, **kw: calls.append(max_norm) or original(
        params, max_norm, **kw)
    trainer.train()
    assert calls == [0.05, 0.05]
    h = [h for h in trainer.state.log_history if "loss" in h][0]
    assert h["grad_norm"] > 0.05  # logged norm is the pre-clip one
    assert sum(h[f"grad_norm/depth{d}"] ** 2 for d in range(6)) ** 0.5 == pytest.approx(h["grad_norm"], rel=1e-4)


def test_plain_trainer_with_callback_refuses(tmp_path):
    trainer = Trainer(model=tiny_model("bert"), args=_args(tmp_path), train_dataset=RandomPairs(),
                      callbacks=[LayerwiseCallback(LayerwiseConfig.preset("top3x5"))])
    with pytest.raises(RuntimeError, match="does not hold the layer-wise parameter groups.*LayerwiseTrainer"):
        trainer.train()


def test_plain_trainer_with_layerwise_optimizer_works(tmp_path):
    model = tiny_model("bert")
    cfg = LayerwiseConfig(top_k=2, top_lr_multiplier=10.0)
    args = _args(tmp_path, max_steps=3)
    trainer = Trainer(model=model, args=args, train_dataset=RandomPairs(),
                      optimizers=(create_optimizer(model, cfg, lr=args.learning_rate), None),
                      callbacks=[LayerwiseCallback(cfg)])
    trainer.train()
    h = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert h["lr/depth4"] / h["lr/depth2"] == pytest.approx(10.0)


def test_replaced_optimizer_is_refused(tmp_path):
    model = tiny_model("bert")
    trainer = LayerwiseTrainer(model=model, args=_args(tmp_path), train_dataset=RandomPairs(),
                               callbacks=[LayerwiseCallback(LayerwiseConfig.preset("top3x5"))])
    trainer.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # user replaces it
    with pytest.raises(RuntimeError, match="does not hold the layer-wise parameter groups"):
        trainer.train()


def test_layerwise_trainer_needs_the_callback(tmp_path):
    with pytest.raises(ValueError, match="needs exactly one LayerwiseCallback"):
        LayerwiseTrainer(model=tiny_model("bert"), args=_args(tmp_path), train_dataset=RandomPairs())


def test_gradient_checkpointing_trap(tmp_path):
    model = tiny_model("bert")
    cfg = LayerwiseConfig(freeze_below=2, top_k=0)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.disable_input_require_grads()
    with pytest.raises(ValueError, match="use_reentrant=True and frozen embeddings"):
        check_training_setup(model, cfg, discover_layers(model))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    check_training_setup(model, cfg, discover_layers(model))  # non-reentrant is fine


def test_fsdp_and_deepspeed_checks(bert):
    class Plugin:
        fsdp_version = 1
        use_orig_params = False

    class State:
        fsdp_plugin = Plugin()
        deepspeed_plugin = None

    layers = discover_layers(bert)
    with pytest.raises(ValueError, match="use_orig_params=True"):
        check_training_setup(bert, LayerwiseConfig(), layers, State())
    Plugin.use_orig_params = True
    check_training_setup(bert, LayerwiseConfig(freeze_below=1, top_k=2), layers, State())
    with pytest.raises(ValueError, match="Gradual unfreezing .* not supported under FSDP or DeepSpeed"):
        check_training_setup(bert, LayerwiseConfig.preset("ulmfit"), layers, State())


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_backward_stops_at_first_trainable_block(bert):
    create_optimizer(bert, LayerwiseConfig(freeze_below=2, top_k=0), lr=1e-3)
    reached = set()
    for i, block in enumerate(bert.bert.encoder.layer):
        block.register_full_backward_pre_hook(lambda m, g, i=i: reached.add(i))
    data = RandomPairs(n=4)
    batch = {k: torch.stack([data[j][k] for j in range(4)]) for k in ("input_ids", "attention_mask", "labels")}
    bert(**batch).loss.backward()
    assert reached == {2, 3}  # blocks 3 and 4 (0-based 2, 3); no backward through the frozen blocks 1-2


def test_gradual_unfreezing_order(bert):
    cfg = LayerwiseConfig(top_k=0, unfreeze_every=3, unfreeze_unit="steps", freeze_embeddings=True)
    unfreezer = GradualUnfreezer(bert, cfg)
    depths = unfreezer.layers.depths

    def trainable():
        return sorted({depths[n] for n, p in bert.named_parameters() if p.requires_grad})

    seen = []
    for step in range(0, 19, 3):
        unfreezer.update(step=step, epoch=0)
        seen.append(trainable())
    assert seen == [[5], [4, 5], [3, 4, 5], [2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]
    assert unfreezer.update(step=19, epoch=0) == []  # same stage: nothing to do


def test_gradual_unfreezing_by_epoch_in_trainer(tmp_path):
    model = tiny_model("bert")
    cfg = LayerwiseConfig.preset("ulmfit")
    args = _args(tmp_path, max_steps=-1, num_train_epochs=3, per_device_train_batch_size=16)
    trainer = LayerwiseTrainer(model=model, args=args, train_dataset=RandomPairs(), callbacks=[LayerwiseCallback(cfg)])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    per_epoch = {int(h["epoch"] - 1e-9): sorted(int(k[len("grad_norm/depth"):]) for k in h if
                                               k.startswith("grad_norm/depth")) for h in logs}
    assert per_epoch == {0: [5], 1: [4, 5], 2: [3, 4, 5]}
    assert len(trainer.optimizer.param_groups) == 12  # all groups present from step 0
