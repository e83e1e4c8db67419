"""recipes/glue.py end to end on a tiny BERT and generated GLUE files (CPU, a few seconds per run)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from glue_fixtures import launch, launch_together, make_model_dir, start, write_glue_task
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "glue.py")
CPU_CONFIG = os.path.join(ROOT, "recipes", "accelerate_configs", "cpu_multi_process.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    model = make_model_dir(str(root / "model"), dropout=0.0)
    for task in ("rte", "stsb", "mnli", "cola"):
        write_glue_task(str(root / "data"), task, n_train=64, n_dev=24)
    write_glue_task(str(root / "big"), "mrpc", n_train=256, n_dev=24)
    return root, model


def _args(setup, out, task="rte", data="data", **extra):
    root, model = setup
    args = ["--task_name", task, "--model_name_or_path", model, "--data_dir", str(root / data), "--output_dir",
            str(out), "--learning_rate", "1e-3", "--num_train_epochs", "2", "--logging_steps", "2", "--seed", "5"]
    for key, value in extra.items():
        args += [f"--{key}"] + ([] if value is True else [str(value)])
    return args


def _launch(args, nproc=1):
    return launch("glue.py", args, nproc)


RESULT_KEYS = {"task", "metrics", "main_metric", "majority_baseline", "history", "log_history", "num_train_examples",
               "num_eval_examples", "seed", "num_processes", "global_batch_size", "completed_steps", "resumed_from",
               "train_time_s", "eval_time_s", "checkpoint_time_s", "train_samples_per_second", "peak_memory_mb", "host",
               "layerwise", "trainable_params", "num_layers", "feature_cache", "lr_find", "config", "versions"}


def _results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def test_results_json_fields(setup, tmp_path):
    _launch(_args(setup, tmp_path, task="stsb", per_device_train_batch_size=8, preset="top3x5", top_k=2,
                  report_to="tensorboard"))
    r = _results(tmp_path)
    assert r["task"] == "stsb" and set(r["metrics"]) == {"pearson", "spearmanr"}
    assert r["num_train_examples"] == 64 and r["num_eval_examples"] == {"validation": 24}
    assert r["global_batch_size"] == 8 and r["num_processes"] == 1 and r["completed_steps"] == 16
    assert r["layerwise"]["top_k"] == 2 and r["layerwise"]["top_lr_multiplier"] == 5.0
    assert r["num_layers"] == 4  # the tiny BERT's blocks, as the layer map found them
    assert r["train_time_s"] > 0 and r["train_samples_per_second"] > 0 and r["peak_memory_mb"] > 0
    assert r["host"]["torch_threads"] == 1 and r["host"]["cpu_share"] > 0 and r["host"]["boot_id"]  # OMP_NUM_THREADS=1
    assert {"torch", "transformers", "hf_layerwise", "git_commit"} <= set(r["versions"])
    assert r["seed"] == 5 and len(r["history"]) == 2
    assert set(r) == RESULT_KEYS
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "glue"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "grad_norm", "lr/depth0", "lr/depth4", "grad_norm/depth5", "eval/spearmanr"} <= tags
    lrs = {tag: [e.value for e in acc.Scalars(tag)] for tag in ("lr/depth2", "lr/depth4")}
    assert all(b == pytest.approx(5 * a) for a, b in zip(lrs["lr/depth2"], lrs["lr/depth4"]) if a > 0)


def test_mnli_reports_matched_and_mismatched(setup, tmp_path):
    _launch(_args(setup, tmp_path, task="mnli", per_device_train_batch_size=16, num_train_epochs=1))
    r = _results(tmp_path)
    assert set(r["metrics"]) == {"accuracy", "accuracy_mm"}
    assert r["num_eval_examples"] == {"validation_matched": 24, "validation_mismatched": 24}


@pytest.mark.slow
def test_two_processes_equal_one_process(setup, tmp_path):
    common = dict(preset="top3x5", top_k=2, unfreeze_every=3, unfreeze_unit="steps", save_model=True)
    launch_together(("glue.py", _args(setup, tmp_path / "one", per_device_train_batch_size=8, **common)),
                    ("glue.py", _args(setup, tmp_path / "two", per_device_train_batch_size=4, cpu=True, **common), 2))
    one, two = _results(tmp_path / "one"), _results(tmp_path / "two")
    assert two["num_processes"] == 2 and two["global_batch_size"] == one["global_batch_size"] == 8
    assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)
    w1 = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5
    start = load_file(os.path.join(setup[1], "model.safetensors"))
    moved = [k for k in start if not torch.equal(start[k], w1["bert." + k] if "bert." + k in w1 else w1[k])]
    assert any("encoder.layer.0." in k for k in moved)  # the bottom block was unfrozen and trained


def test_world_size_trap_is_refused(setup, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(port), RECIPE, *_args(setup, tmp_path, per_device_train_batch_size=4)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)  # no --cpu, no GPU
    assert proc.returncode != 0
    assert "launched as 2 processes (WORLD_SIZE=2) but the accelerator sees 1" in proc.stderr
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_kill_and_resume_gives_same_results(setup, tmp_path):
    extra = dict(task="mrpc", data="big", per_device_train_batch_size=8, num_train_epochs=3, checkpointing_steps=7,
                 preset="ulmfit", unfreeze_unit="steps", unfreeze_every=10)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = start("glue.py", _args(setup, straight, **extra))  # meanwhile: kill and resume its twin
    proc = subprocess.Popen([sys.executable, RECIPE, *_args(setup, killed, **extra)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a bound for a hung run; proc.poll() ends the wait if it finishes first
    while not (killed / "step_28").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    _launch(_args(setup, killed, resume_from_checkpoint="latest", **extra))
    reference.wait()
    a, b = _results(straight), _results(killed)
    assert b["metrics"] == a["metrics"]
    assert b["history"] == a["history"]
    assert b["completed_steps"] == a["completed_steps"] == 96


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = os.path.join(ROOT, "recipes", "accelerate_configs")
    kinds = {}
    for name in sorted(os.listdir(folder)):
        config = load_config_from_file(os.path.join(folder, name))
        kinds[name] = str(config.distributed_type).rsplit(".", 1)[-1]
    assert kinds == {"cpu_multi_process.yaml": "MULTI_GPU", "deepspeed_zero2.yaml": "DEEPSPEED",
                     "deepspeed_zero3.yaml": "DEEPSPEED", "fsdp.yaml": "FSDP", "fsdp2.yaml": "FSDP",
                     "multi_gpu.yaml": "MULTI_GPU", "single_gpu.yaml": "NO"}
    fsdp = load_config_from_file(os.path.join(folder, "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_use_orig_params"] is True and fsdp["fsdp_version"] == 1
    assert load_config_from_file(os.path.join(folder, "fsdp2.yaml")).fsdp_config["fsdp_version"] == 2
    for stage in (2, 3):  # DeepSpeed clips by itself: at the layer-wise default max_grad_norm
        ds = load_config_from_file(os.path.join(folder, f"deepspeed_zero{stage}.yaml")).deepspeed_config
        assert ds["zero_stage"] == stage and ds["gradient_clipping"] == 1.0


def test_finetuning_options_and_early_stopping(setup, tmp_path):
    _launch(_args(setup, tmp_path, per_device_train_batch_size=8, num_train_epochs=4, class_weights="auto",
                  head_bias_init="prior", reinit_top_layers=1, early_stopping_patience=1, learning_rate=1e-6))
    r = _results(tmp_path)
    assert len(r["history"]) < 4  # a tiny LR learns nothing: stopped after one evaluation without improvement
    best = max(h["accuracy"] for h in r["history"])
    assert r["metrics"]["accuracy"] == best and (tmp_path / "best_model" / "model.safetensors").exists()


def test_glue_trainer_recipe(setup, tmp_path):
    """The Trainer recipe honours the shared flags glue.py has (it used to ignore the last four)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "glue_trainer.py"),
                           *_args(setup, tmp_path, task="cola", per_device_train_batch_size=8, preset="top3x5",
                                  top_k=2, max_eval_samples=10, eval_every_epoch=False, monitor=True,
                                  monitor_every=4)], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _results(tmp_path)
    assert set(r["metrics"]) == {"matthews_correlation"} and r["completed_steps"] == 16 and r["num_layers"] == 4
    logged = [h for h in r["log_history"] if "loss" in h]
    assert all(h["lr/depth4"] == pytest.approx(5 * h["lr/depth2"]) for h in logged if h["lr/depth2"] > 0)
    assert r["num_eval_examples"] == {"validation": 10}
    assert [h["step"] for h in r["history"]] == [16]  # no evaluation after epoch 1, one at the end
    steps = [json.loads(line) for line in open(tmp_path / "health.jsonl")]
    assert [s["step"] for s in steps if s["type"] == "step"] == [4, 8, 12, 16]
    assert set(r) == RESULT_KEYS  # the same keys as glue.py's (test_results_json_fields)


def test_monitor_flag_writes_health_log_and_report(setup, tmp_path):
    _launch(_args(setup, tmp_path, per_device_train_batch_size=8, monitor=True, monitor_every=4, preset="top3x10",
                  top_k=2))
    records = [json.loads(line) for line in open(tmp_path / "health.jsonl")]
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [4, 8, 12, 16]
    assert all("update_ratio" in r["depths"]["4"] and "loss" in r for r in steps)
    # the recipe passes its own pre-clip per-depth norms (no gradient hooks): one for every depth
    assert all(all("grad_norm" in d for d in r["depths"].values()) and len(r["depths"]) == 6 for r in steps)
    assert sum(r["type"] == "weight_histogram" for r in records) == 6
    proc = subprocess.run([sys.executable, "-m", "hf_layerwise", "report", str(tmp_path)], env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and (tmp_path / "report.html").exists()
