"""The GLUE recipes on decoder LLMs (issue 28): a tiny random Llama / GPT-2 with a tokenizer that has no padding
token (padded with its end-of-sequence token, as run_glue does), LoRA adapters with layer-wise rates and LoRA+, and
the frozen-feature cache on a decoder's frozen bottom (the same weights as the uncached run, dropout off), resume of a
LoRA run (dropout on) on 1 and 2 processes, and describe's depth table of a decoder with adapters."""

import json

import pytest
from glue_fixtures import launch_together, make_decoder_dir, start, start_resumed, write_glue_task
from safetensors.torch import load_file

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    write_glue_task(str(root / "data"), "mrpc", n_train=64, n_dev=16)
    return {"root": root, "llama": make_decoder_dir(str(root / "llama"), "llama", dropout=0.1),
            "llama0": make_decoder_dir(str(root / "llama0"), "llama", dropout=0.0),
            "gpt2": make_decoder_dir(str(root / "gpt2"), "gpt2", dropout=0.1)}


def _args(setup, out, model="llama", **extra):
    args = {"task_name": "mrpc", "model_name_or_path": setup[model], "data_dir": str(setup["root"] / "data"),
            "output_dir": str(out), "learning_rate": "1e-3", "num_train_epochs": "2", "per_device_train_batch_size": "8",
            "logging_steps": "2", "seed": "3", "preset": "top3x5", "top_k": "2", **extra}
    return [x for k, v in args.items() for x in ([f"--{k}"] if v is True else [f"--{k}", str(v)])]


def _results(folder):
    return json.loads((folder / "results.json").read_text())


def test_lora_on_decoders_through_both_recipes(setup, tmp_path):
    lora, trainer, gpt2 = tmp_path / "lora", tmp_path / "trainer", tmp_path / "gpt2"
    runs = launch_together(
        ("glue.py", _args(setup, lora, lora_r="4", loraplus_ratio="4", save_model=True)),
        ("glue_trainer.py", _args(setup, trainer, lora_r="4", lora_target_modules="q_proj,v_proj")),
        ("glue.py", _args(setup, gpt2, model="gpt2", lora_r="4", freeze_below="2")))
    assert "padding with its end-of-sequence token '</s>'" in runs[0].stderr
    for out in (lora, trainer, gpt2):
        r = _results(out)
        assert r["num_layers"] == 4 and r["completed_steps"] == 16
        logged = [h for h in r["log_history"] if "lr/depth3" in h]
        assert logged and all(h["lr/depth3"] == pytest.approx(5 * h["lr/depth5"]) for h in logged)
        assert all(h["grad_norm/depth4"] > 0 for h in r["log_history"] if "grad_norm/depth4" in h)
    # adapters only (+ the score head): rank 4 on q and v of 4 blocks, hidden 32 -> (32x4 + 4x(32|16)) per target
    r = _results(lora)
    assert r["trainable_params"] < 5000 and r["layerwise"]["loraplus_ratio"] == 4.0
    saved = lora / "model"
    assert (saved / "adapter_config.json").exists() and (saved / "adapter_model.safetensors").exists()
    names = set(load_file(str(saved / "adapter_model.safetensors")))
    assert any("lora_B" in n for n in names) and not any("embed_tokens" in n for n in names)
    # GPT-2 with blocks 1-2 frozen: no adapter of those blocks trains (their grad norm is never logged above 0)
    g = _results(gpt2)
    assert all(h.get("grad_norm/depth1", 0.0) == 0.0 and h.get("grad_norm/depth2", 0.0) == 0.0
               for h in g["log_history"])


def test_frozen_feature_cache_on_a_decoder_trains_the_uncached_weights(setup, tmp_path):
    """Dropout off, a Llama's embeddings and blocks 1-2 frozen: the cached run replays block 2's output and the
    trainable blocks get the rotary embeddings and the causal mask from the model's own forward."""
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    common = dict(model="llama0", preset="top3x5-freeze", save_model=True)
    launch_together(("glue.py", _args(setup, plain, **common)),
                    ("glue.py", _args(setup, cached, cache_frozen=True, cache_dtype="float32", **common)))
    a = load_file(str(plain / "model" / "model.safetensors"))
    b = load_file(str(cached / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    info = _results(cached)["feature_cache"]
    assert info["cut"] == 2 and info["examples"] == 64 + 16


def test_describe_prints_the_depth_table_of_a_decoder_with_adapters(setup, capsys):
    from hf_layerwise.__main__ import main

    assert main(["describe", setup["llama"], "--lora-r", "4", "--preset", "top3x5", "--top_k", "2",
                 "--freeze_below", "1", "--loraplus_ratio", "8"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line[:1].isdigit()}
    assert "yes (base weights)" in rows["0"] and rows["1"].split()[-2:] == ["yes", "448"]  # block 1: frozen adapters
    assert rows["3"].split()[2:4] == ["9,728", "5"] and rows["3"].endswith("448")  # top-2 block: 5x, 448 adapter params
    assert "adapters" in out.splitlines()[0] and "LoRA+: the LoRA B matrices train at 8 x" in out
    assert "PeftModelForSequenceClassification: 4 blocks" in out


def _resume_args(setup, out, **extra):
    return _args(setup, out, lora_r="4", lora_dropout="0.1", loraplus_ratio="4", freeze_below="1",
                 checkpointing_steps="6", logging_steps="5", save_model=True, **extra)


def _same_run(straight, resumed):
    a = load_file(str(straight / "model" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    ra, rb = _results(straight), _results(resumed)
    assert rb["resumed_from"] and rb["metrics"] == ra["metrics"] and rb["history"] == ra["history"]
    assert [(h["step"], h["loss"]) for h in rb["log_history"]] == [(h["step"], h["loss"]) for h in ra["log_history"]]


def test_lora_resume_equals_the_uninterrupted_run_with_dropout_on(setup, tmp_path):
    """Model dropout 0.1 and LoRA dropout 0.1: a run resumed from a mid-epoch checkpoint (1 process, and 2
    processes) trains the uninterrupted run's adapters (1e-6) with the same losses and evaluations."""
    one, two = tmp_path / "one", tmp_path / "two"
    runs = [start("glue.py", _resume_args(setup, one)),
            start("glue.py", [*_resume_args(setup, two, per_device_train_batch_size="4"), "--cpu"], 2)]
    for run in runs:
        run.wait()
    resumed = [start_resumed(one, "step_6", tmp_path / "one_resumed", _resume_args(setup, one)),
               start_resumed(two, "step_6", tmp_path / "two_resumed",
                             _resume_args(setup, two, per_device_train_batch_size="4"), nproc=2)]
    for run in resumed:
        run.wait()
    _same_run(one, tmp_path / "one_resumed")
    _same_run(two, tmp_path / "two_resumed")
    assert _results(two)["num_processes"] == 2
