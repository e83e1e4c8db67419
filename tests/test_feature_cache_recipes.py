"""``--cache_frozen`` through both recipes: with dropout off the cached run trains the same weights as the uncached
run (gradient accumulation, dynamic padding, 2 processes that each build their shard of the cache); with dropout on
a resumed cached run equals the uninterrupted cached run, also with its states in a file (--cache_max_gb 0) that is
deleted at the end; the refusals are cases of test_bad_inputs.py."""

import json

import pytest
from glue_fixtures import make_model_dir, write_glue_task
from safetensors.torch import load_file
from test_resume_exact import _compare, _resume_from, _run, _start


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    write_glue_task(str(root / "data"), "mrpc", n_train=96, n_dev=16)  # 12 batches of 8 per epoch
    return {"root": root, "no_dropout": make_model_dir(str(root / "model0"), dropout=0.0),
            "dropout": make_model_dir(str(root / "model1"), dropout=0.1)}


def _args(setup, out, model="no_dropout", **extra):
    args = {"task_name": "mrpc", "model_name_or_path": setup[model], "data_dir": str(setup["root"] / "data"),
            "output_dir": str(out), "learning_rate": "1e-3", "num_train_epochs": "2",
            "per_device_train_batch_size": "8", "logging_steps": "3", "seed": "5", "preset": "top3x5",
            "top_k": "2", "freeze_below": "2", **extra}
    return [x for k, v in args.items() for x in ([f"--{k}"] if v is True else [f"--{k}", str(v)])] + ["--save_model"]


def _weights(folder):
    return load_file(str(folder / "model" / "model.safetensors"))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _results(folder):
    return json.loads((folder / "results.json").read_text())


@pytest.mark.slow
def test_cached_runs_train_the_uncached_weights(setup, tmp_path):
    """Dropout off: 1 process with accumulation, 2 processes (each building its shard), and the Trainer recipe."""
    plain, cached, two = tmp_path / "plain", tmp_path / "cached", tmp_path / "two"
    t_plain, t_cached = tmp_path / "t_plain", tmp_path / "t_cached"
    runs = [_start(_args(setup, plain, gradient_accumulation_steps=2)),  # independent runs: all at once
            _start(_args(setup, cached, gradient_accumulation_steps=2, cache_frozen=True, cache_dtype="float32")),
            _start(_args(setup, two, cache_frozen=True, cache_dtype="float32"), nproc=2),  # global batch 16 as above
            _start(_args(setup, t_plain, gradient_accumulation_steps=2), recipe="glue_trainer.py"),
            _start(_args(setup, t_cached, gradient_accumulation_steps=2, cache_frozen=True, cache_dtype="float32"),
                   recipe="glue_trainer.py")]
    for run in runs:
        run.wait()
    ref = _weights(plain)
    assert _max_diff(_weights(cached), ref) <= 1e-5
    assert _max_diff(_weights(two), ref) <= 1e-5
    frozen = [k for k in ref if k.startswith(("bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.1."))]
    assert frozen and all((_weights(two)[k] == ref[k]).all() for k in frozen)
    r_plain, r_cached = _results(plain), _results(cached)
    assert r_plain["feature_cache"] is None
    info = r_cached["feature_cache"]
    assert info["cut"] == 2 and info["frozen_dropout"] is False and info["examples"] == 96 + 16
    assert info["memory_bytes"] > 0 and info["disk_bytes"] == 0
    for a, b in zip(r_plain["log_history"], r_cached["log_history"]):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert _results(two)["num_processes"] == 2 and _results(two)["feature_cache"]["examples"] == 112

    assert _max_diff(_weights(t_cached), _weights(t_plain)) <= 1e-5
    assert _results(t_cached)["feature_cache"]["cut"] == 2


@pytest.mark.slow
def test_resumed_cached_run_equals_the_uninterrupted_one(setup, tmp_path):
    """Dropout on (in the trainable blocks): the rebuilt cache and the restored RNG give the same run. The resumed
    run keeps its states in a memory-mapped file (--cache_max_gb 0), deleted at the end: the same run again."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = _args(setup, straight, model="dropout", cache_frozen=True, checkpointing_steps="5")
    _run(args)
    _resume_from(straight, "step_15", resumed, [*args, "--cache_max_gb", "0"])  # mid second epoch
    ra = _compare(straight, resumed)
    assert ra["feature_cache"]["dtype"] == "float16" and ra["feature_cache"]["disk_bytes"] == 0
    assert _results(resumed)["feature_cache"]["disk_bytes"] > 0
    assert not (resumed / "feature_cache" / "feature_cache-rank0.bin").exists()
