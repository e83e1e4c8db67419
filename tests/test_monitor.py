import glob
import json
import os

import pytest
import torch
from conftest import tiny_model
from trainer_run import RandomPairs
from transformers import TrainerCallback, TrainingArguments

from hf_layerwise import (HealthCallback, HealthConfig, HealthMonitor, LayerwiseCallback, LayerwiseConfig,
                          LayerwiseTrainer, NonFiniteError, create_optimizer, discover_layers)
from hf_layerwise.__main__ import main as cli
from hf_layerwise.monitor import HealthAlarm
from hf_layerwise.stats import DepthGradNorms


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8, learning_rate=1e-3,
                warmup_steps=0.1, logging_steps=4, save_strategy="no", report_to=[], use_cpu=True, seed=3,
                disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def _train(tmp_path, cfg, health, extra_callbacks=(), **kw):
    trainer = LayerwiseTrainer(model=tiny_model("bert"), args=_args(tmp_path, **kw), train_dataset=RandomPairs(),
                               callbacks=[*extra_callbacks, LayerwiseCallback(cfg), HealthCallback(health)])
    trainer.train()
    return trainer


def _steps(run_dir):
    with open(os.path.join(run_dir, "health.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["type"] == "step"]


@pytest.mark.filterwarnings("ignore::hf_layerwise.monitor.HealthAlarm")
def test_top_blocks_at_10x_move_more(tmp_path):
    cfg = LayerwiseConfig(top_k=2, top_lr_multiplier=10.0)
    trainer = _train(tmp_path, cfg, HealthConfig(every_n_steps=3))
    steps = _steps(tmp_path)
    assert [r["step"] for r in steps] == [3, 6, 9, 12]
    for r in steps:
        ratio = {int(d): s["update_ratio"] for d, s in r["depths"].items()}
        assert min(ratio[3], ratio[4]) > 3 * max(ratio[1], ratio[2]), ratio  # 10x LR: visibly larger updates
        assert r["lr"]["4"] == pytest.approx(10 * r["lr"]["2"])
        assert all(0 <= s["dead_units"] <= 1 for d, s in r["depths"].items() if 1 <= int(d) <= 4)
    logged = [h for h in trainer.state.log_history if "health/update_ratio/depth4" in h]
    assert [h["step"] for h in logged] == [3, 6, 9, 12]  # forced logs at the measured steps, through the Trainer


def test_unmonitored_steps_leave_no_hooks(bert):
    monitor = HealthMonitor(bert, HealthConfig(every_n_steps=5))
    create_optimizer(bert, LayerwiseConfig(top_k=0), lr=1e-3)

    def hooks():
        n = sum(len(m._forward_hooks) for m in bert.modules())
        return n + sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in bert.parameters())

    assert monitor.begin(4) is False and hooks() == 0 and monitor.end() == {}
    assert monitor.begin(5) is True and hooks() > 0
    batch = {k: torch.stack([RandomPairs(n=4)[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    bert(**batch).loss.backward()
    logs = monitor.end()
    assert hooks() == 0 and "health/grad_norm/depth5" in logs and "health/dead_units/depth1" in logs
    assert monitor.begin(10, grad_hooks=False) is True  # the caller passes grad_norms: FFN (forward) hooks only
    assert hooks() == sum(len(m._forward_hooks) for m in bert.modules()) > 0
    bert(**batch).loss.backward()
    logs = monitor.end(grad_norms={5: 1.5})
    assert hooks() == 0 and logs["health/grad_norm/depth5"] == 1.5 and "health/grad_norm/depth4" not in logs


def test_given_grad_norms_replace_the_hook_norms(bert):
    """The recipe passes DepthGradNorms (param.grad after backward: the DDP-averaged gradient) to the monitor."""
    monitor = HealthMonitor(bert, HealthConfig(every_n_steps=1))
    optimizer = create_optimizer(bert, LayerwiseConfig(top_k=0), lr=1e-3)
    batch = {k: torch.stack([RandomPairs(n=4)[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    norms = DepthGradNorms(bert, discover_layers(bert))
    bert.eval()  # no dropout: both backward passes give the same gradients
    monitor.begin(1)
    bert(**batch).loss.backward()
    from_hooks = monitor.end()
    optimizer.zero_grad()
    monitor.begin(2)
    bert(**batch).loss.backward()
    measured = norms()
    for depth, value in measured.items():  # one process: hooks and param.grad agree
        assert from_hooks[f"health/grad_norm/depth{depth}"] == pytest.approx(value, rel=1e-5)
    logs = monitor.end(optimizer, grad_norms={d: 2 * v for d, v in measured.items()})
    for depth, value in measured.items():
        assert logs[f"health/grad_norm/depth{depth}"] == pytest.approx(2 * value)


class InjectNaN(TrainerCallback):
    def __init__(self, at):
        self.at = at

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.at:
            next(p for p in model.parameters() if p.grad is not None).grad[0] = float("nan")


def test_nan_gradient_stops_the_run_and_last_checkpoint_loads(tmp_path):
    cfg = LayerwiseConfig(top_k=0, max_grad_norm=None)  # no clipping: the NaN reaches the weights
    with pytest.raises(NonFiniteError, match=r"non-finite.*likely cause.*last checkpoint saved before is intact"):
        _train(tmp_path, cfg, HealthConfig(every_n_steps=50), extra_callbacks=[InjectNaN(at=7)], max_steps=20,
               save_strategy="steps", save_steps=5)
    checkpoints = sorted(glob.glob(str(tmp_path / "checkpoint-*")))
    assert [os.path.basename(c) for c in checkpoints] == ["checkpoint-5"]  # checkpoint-10 was refused
    from transformers import AutoModelForSequenceClassification

    restored = AutoModelForSequenceClassification.from_pretrained(checkpoints[-1])
    assert all(torch.isfinite(p).all() for p in restored.parameters())
    alarms = [json.loads(line) for line in open(tmp_path / "health.jsonl") if '"alarm"' in line]
    assert alarms and alarms[0]["kind"] == "nonfinite"


def test_nan_gradient_on_a_measured_step_is_caught_before_the_update(tmp_path):
    with pytest.raises(NonFiniteError, match="depth 0: gradients are non-finite"):
        _train(tmp_path, LayerwiseConfig(top_k=0, max_grad_norm=None), HealthConfig(every_n_steps=2),
               extra_callbacks=[InjectNaN(at=4)])


def test_alarms_name_depth_figure_and_cause(bert):
    monitor = HealthMonitor(bert, HealthConfig(every_n_steps=1, update_ratio_band=(1e-9, 1e-9 * 2)))
    opt = create_optimizer(bert, LayerwiseConfig(top_k=0), lr=1e-2)
    batch = {k: torch.stack([RandomPairs(n=4)[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    monitor.begin(1)
    bert(**batch).loss.backward()
    monitor.before_optimizer_step()
    opt.step()
    with pytest.warns(HealthAlarm, match=r"depth 3: update/weight ratio .* above the band .* learning rate too high"):
        monitor.end(opt)


def test_histograms_in_tensorboard_and_report(tmp_path):
    _train(tmp_path, LayerwiseConfig(top_k=2, top_lr_multiplier=5.0), HealthConfig(every_n_steps=4))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = glob.glob(str(tmp_path / "health_tb" / "events.out.tfevents.*"))
    acc = EventAccumulator(event_file, size_guidance={"histograms": 0})
    acc.Reload()
    tags = acc.Tags()["histograms"]
    assert {"weights/depth0", "weights/depth5", "grads/depth4"} <= set(tags)
    assert len(acc.Histograms("weights/depth3")) == 3  # steps 4, 8, 12

    assert cli(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    for name in ("lr_per_depth.png", "update_ratio_per_depth.png", "grad_norm_per_depth.png",
                 "weight_histograms.png"):
        assert (tmp_path / name).stat().st_size > 5000, name
        assert f'alt="{name}"' in page
    assert page.count("data:image/png;base64,") == 4
    assert cli(["report", str(tmp_path / "nothing")]) == 2  # bad usage: no health log there
