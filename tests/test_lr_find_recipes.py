"""``--learning_rate auto`` / ``--top_lr_multiplier auto`` end to end on a tiny BERT (dropout on), recipes/lr_find.py
on 2 processes, and ``describe --lr-find``.

The exactness claim: the range tests restore everything, so an ``auto`` run trains exactly the run that
``--learning_rate <its choice> --top_lr_multiplier <its choice>`` trains (same weights, bit for bit)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from glue_fixtures import RECIPE_ENV, launch, launch_together, make_model_dir, write_glue_task
from hf_layerwise.glue.arguments import LR_FIND_FALLBACK
from hf_layerwise.glue.data import get_task, read_glue_tsv
from hf_layerwise.glue.run_dir import MANIFEST
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr_find")
    model = make_model_dir(str(root / "model"), dropout=0.1)
    write_glue_task(str(root / "data"), "stsb", n_train=64, n_dev=16)  # regression: the loss falls within a few steps
    return root, model


def _args(setup, out, training=True, **extra):
    root, model = setup
    args = {"task_name": "stsb", "model_name_or_path": model, "data_dir": str(root / "data"), "output_dir": str(out),
            "per_device_train_batch_size": "8", "seed": "4", "preset": "top3x5", "top_k": "2", **extra}
    if training:  # recipes/lr_find.py refuses options that only a training run uses
        args.update(num_train_epochs="1", logging_steps="2")
    if "auto" in (extra.get("learning_rate"), extra.get("top_lr_multiplier")):  # refused without a range test
        args.setdefault("lr_find_steps", "24")
    return [x for k, v in args.items() if v is not None for x in (f"--{k}", v)]  # None: leave the option out


def _label_mean(setup):
    return float(np.mean(read_glue_tsv(get_task("stsb"), str(setup[0] / "data" / "STS-B" / "train.tsv"))["label"]))


def _weights(out):
    return load_file(os.path.join(out, "model", "model.safetensors"))


def test_auto_trains_the_run_its_choice_names(setup, tmp_path):
    auto = tmp_path / "auto"
    # STS-B is a regression, where --learning_rate auto runs no test by default; this test needs one with a valley:
    # the plain MSE (the fixture's random labels have no signal beyond their mean, so the offset test has none)
    plain = dict(lr_find_regression="plain")
    run = launch("glue.py", _args(setup, auto, learning_rate="auto", top_lr_multiplier="auto", save_model="True",
                                checkpointing_steps="5", **plain))
    r = json.loads((auto / "results.json").read_text())
    found = r["lr_find"]
    # a pick on a regression task comes with one line saying why it may collapse the run
    warned = [line for line in run.stderr.splitlines() if "LR range test on a regression task" in line]
    assert len(warned) == 1 and f"the pick ({found['learning_rate']:.3g})" in warned[0], run.stderr
    assert [t["settings"]["label_offset"] for t in found["tests"]] == [None, None]
    assert [t["kind"] for t in found["tests"]] == ["lr", "multiplier"] and found["tests"][1]["target"] == "top2"
    assert found["tests"][0]["valley"], found["tests"][0]["note"]
    assert found["rule"] == "centred_valley" and found["time_s"] > 0 and found["reused_from"] is None
    lr, top = found["learning_rate"], found["top_lr_multiplier"]
    assert lr == found["tests"][0]["suggestion"] and 1e-7 <= lr <= 1.0
    assert r["config"]["train"]["learning_rate"] == lr and r["layerwise"]["top_lr_multiplier"] == top
    assert json.loads((auto / "lr_find.json").read_text()) == found
    assert (auto / "lr_find.png").stat().st_size > 1000
    # the groups the run trained with: the scanned multiplier on the top 2 blocks
    logged = r["log_history"][-1]
    assert logged["lr/depth4"] == pytest.approx(top * logged["lr/depth1"])

    # the run with those numbers given (and, at the same time, a resumed auto run: it reads the first segment's
    # choice back instead of testing again)
    fixed, resumed = tmp_path / "fixed", tmp_path / "resumed"
    os.makedirs(resumed)
    shutil.copytree(auto / "step_5", resumed / "step_5")
    shutil.copy(auto / "lr_find.json", resumed)
    shutil.copy(auto / MANIFEST, resumed)
    launch_together(("glue.py", _args(setup, fixed, learning_rate=repr(lr), top_lr_multiplier=repr(top),
                                      save_model="True")),
                    ("glue.py", _args(setup, resumed, learning_rate="auto", top_lr_multiplier="auto",
                                      save_model="True", checkpointing_steps="5", resume_from_checkpoint="latest",
                                      **plain)))
    a, b = _weights(auto), _weights(fixed)
    assert all(torch.equal(a[k], b[k]) for k in a), "the range tests changed the run that follows them"
    again = json.loads((resumed / "results.json").read_text())["lr_find"]
    assert again["reused_from"] == str(resumed / "lr_find.json") and again["learning_rate"] == lr
    c = _weights(resumed)
    assert all(torch.allclose(a[k], c[k], atol=1e-6, rtol=0) for k in a)


def test_fallback_when_the_curve_has_no_valley(setup, tmp_path):
    """A range far too low to train has no usable valley: with --lr_find_fallback the run trains at the fallback
    (recorded as such) and is the run --learning_rate <fallback> trains, bit for bit; without it, at the documented
    default (5e-5), with one warning line saying why. On a regression task with no --lr_find_regression, no test
    at all: the run at the fallback, bit for bit, with one line saying why."""
    flat = dict(learning_rate="auto", lr_find_min_lr="1e-9", lr_find_max_lr="1e-8", lr_find_steps="6",
                save_model="True", lr_find_regression="plain")
    auto, fixed, default = tmp_path / "auto", tmp_path / "fixed", tmp_path / "default"
    skipped, fixed_default = tmp_path / "skipped", tmp_path / "fixed_default"
    runs = launch_together(("glue.py", _args(setup, auto, lr_find_fallback="0.002", **flat)),
                           ("glue.py", _args(setup, fixed, learning_rate="0.002", save_model="True")),
                           ("glue.py", _args(setup, default, **flat)),
                           ("glue.py", _args(setup, skipped, learning_rate="auto", save_model="True",
                                             lr_find_steps=None)),  # no test to size
                           ("glue.py", _args(setup, fixed_default, learning_rate="5e-5", save_model="True")))
    found = json.loads((auto / "results.json").read_text())["lr_find"]
    assert found["fallback"] is True and found["learning_rate"] == 0.002
    assert not found["tests"][0]["valley"] and found["tests"][0]["note"]  # why it has none
    by_default = json.loads((default / "results.json").read_text())["lr_find"]
    assert by_default["fallback"] is True and by_default["learning_rate"] == LR_FIND_FALLBACK == 5e-5
    warned = [line for line in runs[2].stderr.splitlines() if "WARNING hf_layerwise.lr_find: LR range test:" in line]
    assert len(warned) == 1 and "training at 5e-05 (the default --lr_find_fallback)" in warned[0], runs[2].stderr
    assert "on a regression task" not in runs[2].stderr  # no pick, nothing to warn about: it trains at 5e-5
    assert json.loads((fixed / "results.json").read_text())["lr_find"] is None
    a, b = _weights(auto), _weights(fixed)
    assert all(torch.equal(a[k], b[k]) for k in a), "the fallback run is not the run at the fallback LR"
    # the regression default: no range test, the fallback LR, one line saying why
    none = json.loads((skipped / "results.json").read_text())["lr_find"]
    assert none["fallback"] is True and none["learning_rate"] == 5e-5 and none["tests"] == []
    assert json.loads((skipped / "lr_find.json").read_text()) == none and not (skipped / "lr_find.png").exists()
    warned = [line for line in runs[3].stderr.splitlines() if "--learning_rate auto on a regression task" in line]
    assert len(warned) == 1 and "no range test" in warned[0] and "training at 5e-05" in warned[0], runs[3].stderr
    a, b = _weights(skipped), _weights(fixed_default)
    assert all(torch.equal(a[k], b[k]) for k in a), "the regression default is not the run at the fallback LR"
    # the manifest lists what --learning_rate auto wrote (listed before `auto` became a number): a run killed after
    # the range test, or a finished one, can be run again over it instead of being refused as someone else's files
    for out in (auto, default, skipped):
        assert {"lr_find.json", "results.json"} <= set(json.loads((out / MANIFEST).read_text())["names"])
    launch("glue.py", _args(setup, skipped, learning_rate="auto", save_model="True", lr_find_steps=None,
                            overwrite_output_dir="True"))
    # the same decision again (time_s is a wall-clock reading and may differ by a rounding step)
    again = json.loads((skipped / "results.json").read_text())["lr_find"]
    assert {k: v for k, v in again.items() if k != "time_s"} == {k: v for k, v in none.items() if k != "time_s"}


def test_trainer_recipe_auto(setup, tmp_path):
    """The Trainer recipe's range test on the regression task: with the label offset, and on the plain MSE (one
    warning line with its pick)."""
    out, plain = tmp_path / "trainer", tmp_path / "plain"
    wide = dict(learning_rate="auto", lr_find_max_lr="1")  # the plain curve's descent ends inside the range
    runs = launch_together(("glue_trainer.py", _args(setup, out, lr_find_regression="offset", **wide)),
                           ("glue_trainer.py", _args(setup, plain, lr_find_regression="plain", **wide)))
    r = json.loads((out / "results.json").read_text())
    assert r["lr_find"]["learning_rate"] == r["config"]["train"]["learning_rate"]
    assert [t["kind"] for t in r["lr_find"]["tests"]] == ["lr"] and (out / "lr_find.png").exists()
    peak = max(h["learning_rate"] for h in r["log_history"] if "learning_rate" in h)  # the Trainer's schedule
    assert peak <= r["lr_find"]["learning_rate"] * 1.0001 and peak > 0.3 * r["lr_find"]["learning_rate"]
    with_offset, without = r["lr_find"]["tests"][0], json.loads((plain / "lr_find.json").read_text())["tests"][0]
    assert with_offset["settings"]["label_offset"] == pytest.approx(_label_mean(setup))
    assert without["settings"]["label_offset"] is None
    assert without["losses"][0] > 2 * with_offset["losses"][0]  # mean**2 + variance against about the variance
    for run, test, mode in ((runs[0], with_offset, "offset"), (runs[1], without, "plain")):
        warned = [line for line in run.stderr.splitlines() if "LR range test on a regression task" in line]
        if test["valley"]:  # a pick: one line saying why it may collapse the run; no pick: it trains at the fallback
            assert len(warned) == 1 and f"(--lr_find_regression {mode})" in warned[0], run.stderr
        else:
            assert not warned and r["lr_find"]["fallback"], run.stderr
    assert without["valley"]  # the plain curve's mean-fitting descent
    for folder in (out, plain):  # what the range test wrote is this run's (listed in the manifest)
        assert {"lr_find.json", "lr_find.png"} <= set(json.loads((folder / MANIFEST).read_text())["names"])


def test_lr_find_script_two_processes_and_describe(setup, tmp_path):
    out = tmp_path / "find"
    proc = launch("lr_find.py", _args(setup, out, training=False, scan="top,head,depths", lr_find_steps="10",
                                        cpu="True", freeze_below="2", lr_find_regression="offset"), nproc=2)
    saved = json.loads((out / "lr_find.json").read_text())
    targets = [t["target"] for t in saved["tests"]]
    assert targets == [None, "top2", "head", "depth3", "depth4", "depth5"], targets  # depths 0-2 frozen
    assert [t["settings"]["label_offset"] for t in saved["tests"]] == [pytest.approx(_label_mean(setup))] * 6
    assert "chosen: base lr" in proc.stdout and not (out / "results.json").exists()
    root, model = setup
    cli = subprocess.run([sys.executable, "-m", "hf_layerwise", "describe", model, "--preset", "top3x5", "--top_k",
                          "2", "--freeze_below", "2", "--lr-find", str(out / "lr_find.json")], env=RECIPE_ENV, capture_output=True, text=True,
                         timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "scan suggests" in cli.stdout
    head_row = [line for line in cli.stdout.splitlines() if line.startswith("5 (head)")][0]
    head = saved["tests"][2]
    assert (f"{head['suggestion']:.3g}" if head["valley"] else "no valley") in head_row
