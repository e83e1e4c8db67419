"""Resume == uninterrupted, with dropout ON (a test with dropout off cannot see RNG-stream bugs): final weights within
1e-6 and the same logged losses and evaluations, from a mid-epoch checkpoint, from one written at an epoch's last
batch, from an epoch-end checkpoint, with 2 processes, and through the Trainer recipe.

Each resumed run starts from a copy of one checkpoint of the uninterrupted run, in a fresh process, exactly as after
a kill (checkpointing does not change the run: it draws no random numbers).
"""

import json
import os

import pytest
from glue_fixtures import make_model_dir, start, start_resumed, write_glue_task
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model = make_model_dir(str(root / "model"), dropout=0.1)
    write_glue_task(str(root / "data"), "mrpc", n_train=96, n_dev=16)  # 12 batches of 8 per epoch
    return root, model


def _args(setup, out, **extra):
    root, model = setup
    args = {"task_name": "mrpc", "model_name_or_path": model, "data_dir": str(root / "data"), "output_dir": str(out),
            "learning_rate": "1e-3", "num_train_epochs": "2", "per_device_train_batch_size": "8",
            "logging_steps": "5", "checkpointing_steps": "6", "seed": "5", "preset": "top3x5", "top_k": "2",
            "freeze_below": "1",  # embeddings and block 1 frozen: static freezing resumes exactly too
            **extra}
    return [x for k, v in args.items() for x in ([f"--{k}"] if v is True else [f"--{k}", str(v)])] + ["--save_model"]


def _start(args, recipe="glue.py", nproc=1):
    return start(recipe, [*args, "--cpu"] if nproc > 1 else args, nproc)


def _run(args, recipe="glue.py", nproc=1):
    _start(args, recipe, nproc).wait()


def _resume_from(straight, checkpoint, resumed, args, **kwargs):
    start_resumed(straight, checkpoint, resumed, args, **kwargs).wait()


def _compare(straight, resumed):
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (straight, resumed))
    assert rb["resumed_from"] and rb["completed_steps"] == ra["completed_steps"]
    assert rb["metrics"] == ra["metrics"] and rb["history"] == ra["history"]
    # the loss sums pending at the checkpoint are restored: every logged loss is the same (the Trainer's log history
    # up to the checkpoint comes back with its trainer_state.json)
    assert [(h["step"], h["loss"]) for h in rb["log_history"]] == [(h["step"], h["loss"]) for h in ra["log_history"]]
    return ra


@pytest.mark.slow
def test_resume_mid_epoch_and_at_an_epoch_end_batch(setup, tmp_path):
    straight = tmp_path / "straight"
    args = _args(setup, straight)
    _run(args)
    assert {"model.safetensors", "optimizer.bin", "progress.json"} <= set(os.listdir(straight / "step_6"))
    checkpoints = ("step_6", "step_12")  # batch 6 of 12 (a loss sum pending); the epoch's last batch
    for run in [start_resumed(straight, c, tmp_path / c, args) for c in checkpoints]:  # both at once
        run.wait()
    for checkpoint in checkpoints:
        result = _compare(straight, tmp_path / checkpoint)
    assert result["completed_steps"] == 24 and len(result["log_history"]) == 4


@pytest.mark.slow
def test_resume_from_an_epoch_checkpoint_with_accumulation(setup, tmp_path):
    straight = tmp_path / "straight"
    args = _args(setup, straight, checkpointing_steps="epoch", gradient_accumulation_steps=5, logging_steps=2)
    _run(args)  # 12 batches: steps of 5, 5 and 2 batches per epoch
    assert sorted(p.name for p in straight.glob("step_*")) == ["step_3", "step_6"]
    _resume_from(straight, "step_3", tmp_path / "resumed", args)
    _compare(straight, tmp_path / "resumed")


@pytest.mark.slow
def test_resume_with_two_processes(setup, tmp_path):
    straight = tmp_path / "straight"
    args = _args(setup, straight, per_device_train_batch_size=4)
    _run(args, nproc=2)
    _resume_from(straight, "step_6", tmp_path / "resumed", args, nproc=2)
    result = _compare(straight, tmp_path / "resumed")
    assert result["num_processes"] == 2 and result["global_batch_size"] == 8


@pytest.mark.slow
def test_trainer_recipe_resume(setup, tmp_path):
    straight = tmp_path / "straight"
    args = _args(setup, straight)
    _run(args, recipe="glue_trainer.py")
    _resume_from(straight, "checkpoint-6", tmp_path / "resumed", args, recipe="glue_trainer.py")
    _compare(straight, tmp_path / "resumed")
