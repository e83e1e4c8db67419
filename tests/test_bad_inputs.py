"""Bad input and faults, as a user meets them: every case ends in one ``error: ...`` line naming the problem, the
documented exit code (2 bad usage, 1 failed run), no traceback, and nothing written or overwritten.

The cases call each program's ``main`` through ``run_cli`` in this process (the same code as the command line, without
paying the import time per case); ``test_entry_points_print_one_line`` runs a few as real commands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable

import pytest
from glue_fixtures import Started, make_model_dir, write_glue_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))
import ablate  # noqa: E402
import glue as glue_recipe  # noqa: E402
import glue_trainer  # noqa: E402
import lr_find  # noqa: E402

from hf_layerwise.__main__ import _main as cli_main  # noqa: E402
from hf_layerwise.errors import run_cli  # noqa: E402

PROGRAMS = {"glue": glue_recipe.main, "trainer": glue_trainer.main, "ablate": ablate.main, "cli": cli_main,
            "lr_find": lr_find.main}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Inputs shared by the cases: a tiny model, GLUE folders, a saved 2-label classifier, finished runs of both
    recipes (with checkpoints) to copy into a case's folder."""
    root = tmp_path_factory.mktemp("bad")
    model = make_model_dir(str(root / "model"), dropout=0.1)
    for task in ("rte", "stsb", "mrpc"):
        write_glue_task(str(root / "data"), task, n_train=32, n_dev=8)
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(model, num_labels=2).save_pretrained(root / "classifier")
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(195)]]
    for name, pad in (("bigtok", "[PAD]"), ("nopad", None)):
        (root / name).mkdir()
        (root / name / "vocab.txt").write_text("\n".join(words[:200 if pad else 20]) + "\n")
        tok = BertTokenizer(vocab=str(root / name / "vocab.txt"))
        if pad is None:
            tok.pad_token = None
        tok.save_pretrained(root / name)
    shutil.copy(os.path.join(model, "vocab.txt"), root / "classifier")
    base = ["--model_name_or_path", model, "--data_dir", str(root / "data"), "--task_name", "rte",
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--max_train_steps", "4",
            "--checkpointing_steps", "2", "--seed", "3"]
    assert run_cli(glue_recipe.main, [*base, "--output_dir", str(root / "glue_run")]) == 0
    assert run_cli(glue_trainer.main, [*base, "--output_dir", str(root / "trainer_run")]) == 0
    return root


@dataclass
class Case:
    id: str
    program: str
    args: list[str]  # {model} {data} {root} {out} {work} are filled in; glue/trainer get the base arguments
    code: int
    message: str
    setup: Callable[[str, str], None] | None = None  # (work, root): make the damaged inputs in the case's folder
    base: bool = True
    drop: list[str] = field(default_factory=list)  # base options to leave out


def _copy_run(name):
    def setup(work, root):
        shutil.copytree(os.path.join(root, name), os.path.join(work, "out"))
    return setup


def _write(relpath, text, binary=False):
    def setup(work, root):
        path = os.path.join(work, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if relpath.startswith("data/") and not os.path.exists(os.path.join(work, "data", "RTE", "dev.tsv")):
            shutil.copytree(os.path.join(root, "data"), os.path.join(work, "data"), dirs_exist_ok=True)
        with open(path, "wb" if binary else "w") as f:
            f.write(text)
    return setup


def _stsb_label(value):
    def setup(work, root):
        shutil.copytree(os.path.join(root, "data"), os.path.join(work, "data"))
        path = os.path.join(work, "data", "STS-B", "train.tsv")
        lines = open(path).read().splitlines()
        fields = lines[2].split("\t")
        lines[2] = "\t".join(fields[:-1] + [value])
        open(path, "w").write("\n".join(lines) + "\n")
    return setup


def _damage(run, checkpoint, name, how):
    def setup(work, root):
        _copy_run(run)(work, root)
        path = os.path.join(work, "out", checkpoint, name)
        if how == "delete":
            os.unlink(path)
        else:  # truncate to half
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    return setup


def _chain(*setups):
    def setup(work, root):
        for s in setups:
            s(work, root)
    return setup


def _strip_run_to_results(run):
    def setup(work, root):
        _copy_run(run)(work, root)
        for name in os.listdir(os.path.join(work, "out")):
            if name.startswith(("step_", "checkpoint-")):
                shutil.rmtree(os.path.join(work, "out", name))
    return setup


def _empty_folder(name):
    def setup(work, root):
        os.makedirs(os.path.join(work, name))
    return setup


def _a_file(name):
    def setup(work, root):
        open(os.path.join(work, name), "w").write("not a folder")
    return setup


def _truncated_model(work, root):
    shutil.copytree(os.path.join(root, "model"), os.path.join(work, "model"))
    path = os.path.join(work, "model", "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)


RTE_ONE_CLASS = "index\tsentence1\tsentence2\tlabel\n" + "".join(
    f"{i}\ta dog runs .\ta cat sees .\tentailment\n" for i in range(8))
DATA = ["--data_dir", "{work}/data"]
RESUME = ["--resume_from_checkpoint", "latest"]

CASES = [
    # -- arguments: ranges and types, refused before anything is loaded -------------------------------------------
    Case("max_train_samples_0", "glue", ["--max_train_samples", "0"], 2, "--max_train_samples 0: must be >= 1"),
    Case("max_eval_samples_0", "glue", ["--max_eval_samples", "0"], 2, "--max_eval_samples 0: must be >= 1"),
    Case("checkpointing_steps_0", "glue", ["--checkpointing_steps", "0"], 2, "--checkpointing_steps '0'"),
    Case("checkpointing_steps_word", "glue", ["--checkpointing_steps", "often"], 2, "--checkpointing_steps 'often'"),
    Case("num_train_epochs_0", "glue", ["--num_train_epochs", "0"], 2, "--num_train_epochs 0.0: must be > 0",
         drop=["--max_train_steps"]),
    Case("grad_accum_0", "glue", ["--gradient_accumulation_steps", "0"], 2, "--gradient_accumulation_steps 0"),
    Case("batch_size_0", "glue", ["--per_device_train_batch_size", "0"], 2, "--per_device_train_batch_size 0"),
    Case("learning_rate_0", "glue", ["--learning_rate", "0"], 2, "--learning_rate 0.0: must be a finite number > 0"),
    Case("learning_rate_nan", "glue", ["--learning_rate", "nan"], 2, "--learning_rate nan"),
    Case("learning_rate_word", "glue", ["--learning_rate", "fast"], 2, "invalid number (or auto) value: 'fast'"),
    Case("warmup_ratio_1.5", "glue", ["--warmup_ratio", "1.5"], 2, "--warmup_ratio 1.5: must be in [0, 1)"),
    Case("scheduler_unknown", "glue", ["--lr_scheduler_type", "zigzag"], 2, "--lr_scheduler_type 'zigzag'"),
    Case("task_unknown", "glue", ["--task_name", "nope"], 2, "Unknown GLUE task 'nope'"),
    Case("option_unknown", "glue", ["--learning_rte", "1e-3"], 2, "--learning_rte"),
    Case("seed_negative", "glue", ["--seed", "-1"], 2, "--seed -1: must be in [0, 2**32)"),
    Case("logging_steps_0", "glue", ["--logging_steps", "0"], 2, "--logging_steps 0: must be >= 1"),
    Case("monitor_every_0", "glue", ["--monitor", "--monitor_every", "0"], 2, "--monitor_every 0: must be >= 1"),
    Case("patience_0", "glue", ["--early_stopping_patience", "0"], 2, "--early_stopping_patience 0"),
    Case("patience_without_eval", "glue", ["--early_stopping_patience", "2", "--eval_every_epoch", "False"], 2,
         "needs an evaluation after every epoch"),
    Case("overwrite_and_resume", "glue", ["--overwrite_output_dir", *RESUME], 2,
         "--overwrite_output_dir deletes the checkpoints"),
    Case("fp16_on_cpu", "glue", ["--mixed_precision", "fp16"], 2, "--mixed_precision fp16 needs a CUDA GPU"),
    Case("precision_unknown", "glue", ["--mixed_precision", "fp8"], 2, "--mixed_precision 'fp8': use no"),
    Case("report_to_unknown", "glue", ["--report_to", "mlflowx"], 2, "--report_to 'mlflowx'"),
    Case("max_seq_length_0", "glue", ["--max_seq_length", "0"], 2, "--max_seq_length 0: must be >= 8"),
    # -- layer-wise options --------------------------------------------------------------------------------------
    Case("preset_unknown", "glue", ["--preset", "top3x50"], 2, "Unknown preset 'top3x50'"),
    Case("top_k_too_large", "glue", ["--top_k", "99"], 2, "top_k=99 is larger than the model's 4 encoder blocks"),
    Case("multiplier_negative", "glue", ["--top_lr_multiplier", "-1"], 2, "must be finite and > 0"),
    Case("reinit_too_many", "glue", ["--reinit_top_layers", "9"], 2, "larger than the model's 4 encoder blocks"),
    # -- the model -------------------------------------------------------------------------------------------------
    Case("model_missing", "glue", ["--model_name_or_path", "{work}/no/such/model"], 2, "no/such/model: no such folder"),
    Case("model_no_config", "glue", ["--model_name_or_path", "{work}/empty"], 2, "the folder has no config.json",
         setup=_empty_folder("empty")),
    Case("model_truncated", "glue", ["--model_name_or_path", "{work}/model"], 2, "model: cannot load the model",
         setup=_truncated_model),
    Case("head_mismatch", "glue", ["--model_name_or_path", "{root}/classifier", "--task_name", "stsb"], 2,
         "has a 2-label classification head (BertForSequenceClassification) but stsb needs 1: pass "
         "--ignore_mismatched_sizes"),
    Case("max_seq_length_too_long", "glue", ["--max_seq_length", "512"], 2,
         "--max_seq_length 512 is longer than the 128 positions"),
    Case("tokenizer_missing", "glue", ["--tokenizer_name", "{work}/no/tokenizer"], 2,
         "--tokenizer_name {work}/no/tokenizer: cannot load a tokenizer"),
    # -- the data --------------------------------------------------------------------------------------------------
    Case("stsb_label_nan", "glue", [*DATA, "--task_name", "stsb"], 2, "STS-B/train.tsv:3: label 'nan' is not a stsb "
         "score: expected a finite number in [0, 5]", setup=_stsb_label("nan")),
    Case("stsb_label_inf", "glue", [*DATA, "--task_name", "stsb"], 2, "label 'inf' is not a stsb score",
         setup=_stsb_label("inf")),
    Case("stsb_label_out_of_range", "glue", [*DATA, "--task_name", "stsb"], 2, "label '7.5' is not a stsb score",
         setup=_stsb_label("7.5")),
    Case("rte_label_unknown", "glue", DATA, 2, "RTE/train.tsv:2: label 'maybe' is not one of",
         setup=_write("data/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")),
    Case("train_header_only", "glue", DATA, 2, "RTE/train.tsv: no examples",
         setup=_write("data/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n")),
    Case("dev_empty", "glue", DATA, 2, "RTE/dev.tsv: empty file", setup=_write("data/RTE/dev.tsv", "")),
    Case("train_binary", "glue", DATA, 2, "RTE/train.tsv: not a UTF-8 text file",
         setup=_write("data/RTE/train.tsv", bytes(range(256)) * 8, binary=True)),
    Case("train_latin1", "glue", DATA, 2, "RTE/train.tsv: not a UTF-8 text file",
         setup=_write("data/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tcaf\xe9\tb\tentailment\n"
                      .encode("latin-1"), binary=True)),
    Case("train_short_row", "glue", DATA, 2, "RTE/train.tsv:3: expected 4 tab-separated fields, found 3",
         setup=_write("data/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")),
    Case("data_dir_without_task", "glue", ["--data_dir", "{work}"], 2, "RTE: no such folder; --data_dir must hold"),
    Case("data_dir_and_files", "glue", ["--train_file", "t.csv", "--validation_file", "v.csv"], 2,
         "--data_dir and --train_file/--validation_file both given"),
    Case("train_file_alone", "glue", ["--train_file", "{work}/t.json"], 2, "pass both --train_file and "
         "--validation_file", drop=["--data_dir"]),
    Case("train_file_bad_json", "glue", ["--train_file", "{work}/t.json", "--validation_file", "{work}/t.json"], 2,
         "t.json:1: invalid JSON", drop=["--data_dir"], setup=_write("t.json", "{not json\n")),
    Case("class_weights_missing_class", "glue", [*DATA, "--class_weights", "auto"], 2, "class(es) [1] never occur",
         setup=_write("data/RTE/train.tsv", RTE_ONE_CLASS)),
    # -- the output folder -----------------------------------------------------------------------------------------
    Case("output_holds_run", "glue", [], 2, "already holds a run (results.json, step_2, step_4): pass "
         "--overwrite_output_dir", setup=_copy_run("glue_run")),
    Case("output_holds_checkpoints", "glue", [], 2, "already holds a run (step_2, step_4)",
         setup=_chain(_copy_run("glue_run"), lambda w, r: os.unlink(os.path.join(w, "out", "results.json")))),
    Case("output_is_a_file", "glue", [], 2, "out: exists and is not a folder", setup=_a_file("out")),
    Case("output_empty_name", "glue", ["--output_dir", ""], 2, "--output_dir is empty"),
    Case("output_below_a_file", "glue", ["--output_dir", "{work}/file/out"], 2, "cannot write there",
         setup=_a_file("file")),
    # -- resume ----------------------------------------------------------------------------------------------------
    Case("resume_missing_folder", "glue", ["--resume_from_checkpoint", "{work}/nope"], 2, "nope: no such folder"),
    Case("resume_without_optimizer", "glue", ["--resume_from_checkpoint", "{out}/step_4"], 2,
         "step_4/optimizer.bin is missing", setup=_damage("glue_run", "step_4", "optimizer.bin", "delete")),
    Case("resume_truncated_weights", "glue", ["--resume_from_checkpoint", "{out}/step_4"], 2,
         "step_4/model.safetensors is truncated", setup=_damage("glue_run", "step_4", "model.safetensors", "cut")),
    Case("resume_truncated_progress", "glue", ["--resume_from_checkpoint", "{out}/step_4"], 2,
         "step_4/progress.json is not valid JSON", setup=_damage("glue_run", "step_4", "progress.json", "cut")),
    Case("resume_latest_all_damaged", "glue", RESUME, 2, "no complete checkpoint in",
         setup=_chain(_damage("glue_run", "step_4", "optimizer.bin", "delete"),
                      lambda w, r: os.unlink(os.path.join(w, "out", "step_2", "random_states_0.pkl")))),
    Case("resume_latest_nothing_to_resume", "glue", RESUME, 2, "holds a run (results.json) but no checkpoint",
         setup=_strip_run_to_results("glue_run")),
    Case("resume_other_learning_rate", "glue", [*RESUME, "--learning_rate", "2e-3"], 2,
         "--learning_rate 0.002 (checkpoint: 0.001)", setup=_copy_run("glue_run")),
    Case("resume_other_preset", "glue", [*RESUME, "--preset", "top3x10", "--top_k", "2"], 2,
         "layer-wise top_k 2 (checkpoint: 3); layer-wise top_lr_multiplier 10.0 (checkpoint: 5.0)",
         setup=_copy_run("glue_run")),
    Case("resume_other_batch_size", "glue", [*RESUME, "--per_device_train_batch_size", "4"], 2,
         "--per_device_train_batch_size 4 (checkpoint: 8)", setup=_copy_run("glue_run")),
    Case("resume_other_schedule", "glue", [*RESUME, "--lr_scheduler_type", "cosine"], 2,
         "--lr_scheduler_type 'cosine' (checkpoint: 'linear')", setup=_copy_run("glue_run")),
    # -- the Trainer recipe: the same checks --------------------------------------------------------------------------
    Case("trainer_max_train_samples_0", "trainer", ["--max_train_samples", "0"], 2, "--max_train_samples 0"),
    Case("trainer_model_missing", "trainer", ["--model_name_or_path", "{work}/none"], 2, "none: no such folder"),
    Case("trainer_stsb_label_nan", "trainer", [*DATA, "--task_name", "stsb"], 2, "label 'nan' is not a stsb score",
         setup=_stsb_label("nan")),
    Case("trainer_output_holds_run", "trainer", [], 2, "already holds a run (checkpoint-2, checkpoint-4, "
         "results.json)", setup=_copy_run("trainer_run")),
    Case("trainer_patience_with_step_checkpoints", "trainer", ["--early_stopping_patience", "1"], 2,
         "use --checkpointing_steps epoch or leave it unset"),
    Case("trainer_resume_without_optimizer", "trainer", RESUME, 2, "checkpoint-4/optimizer.pt is missing",
         setup=_chain(_damage("trainer_run", "checkpoint-4", "optimizer.pt", "delete"),
                      lambda w, r: os.unlink(os.path.join(w, "out", "checkpoint-2", "scheduler.pt")))),
    Case("trainer_resume_other_learning_rate", "trainer", [*RESUME, "--learning_rate", "5e-4"], 2,
         "--learning_rate 0.0005 (checkpoint: 0.001)", setup=_copy_run("trainer_run")),
    # -- the sweep -------------------------------------------------------------------------------------------------
    Case("ablate_task_unknown", "ablate", ["run", "--tasks", "rte,nope", "--presets", "baseline", "--out", "{out}"],
         2, "Unknown GLUE task 'nope'", base=False),
    Case("ablate_seeds_word", "ablate", ["run", "--tasks", "rte", "--presets", "baseline", "--seeds", "one", "--out",
                                         "{out}"], 2, "--seeds 'one'", base=False),
    Case("ablate_preset_unknown", "ablate", ["run", "--tasks", "rte", "--presets", "baseline,top3", "--out", "{out}",
                                             "--", "--model_name_or_path", "{model}"], 2,
         "cell top3 (task rte): layer-wise options: Unknown preset 'top3'", base=False),
    Case("ablate_cell_bad_option", "ablate", ["run", "--tasks", "rte", "--cell", "fast=--learning_rate -1", "--out",
                                              "{out}", "--", "--model_name_or_path", "{model}"], 2,
         "cell fast (task rte): --learning_rate -1.0: must be a finite number > 0", base=False),
    Case("ablate_forwarded_typo", "ablate", ["run", "--tasks", "rte", "--presets", "baseline", "--out", "{out}", "--",
                                             "--model_name_or_path", "{model}", "--num_train_epocs", "1"], 2,
         "--num_train_epocs", base=False),
    Case("ablate_launcher_missing", "ablate", ["run", "--tasks", "rte", "--presets", "baseline", "--out", "{out}",
                                               "--launcher", "no-such-launcher -x"], 2, "no-such-launcher is not a "
         "program on PATH", base=False),
    Case("ablate_grid_bad", "ablate", ["run", "--tasks", "rte", "--grid", "top_k", "--out", "{out}"], 2,
         "--grid 'top_k': use key=v1,v2", base=False),
    # -- --cache_frozen ----------------------------------------------------------------------------------------------
    Case("cache_nothing_frozen", "glue", ["--cache_frozen"], 2, "cache_frozen=True needs frozen encoder blocks"),
    Case("cache_nothing_frozen_trainer", "trainer", ["--cache_frozen", "--preset", "top3x5"], 2,
         "cache_frozen=True needs frozen encoder blocks"),
    Case("cache_compiled", "glue", ["--cache_frozen", "--freeze_below", "2", "--torch_compile"], 2,
         "--cache_frozen with --torch_compile"),
    Case("cache_dtype_unknown", "trainer", ["--cache_frozen", "--freeze_below", "2", "--cache_dtype", "int8"], 2,
         "--cache_dtype 'int8': use float16, bfloat16 or float32"),
    Case("cache_max_gb_negative", "glue", ["--cache_frozen", "--freeze_below", "2", "--cache_max_gb", "-1"], 2,
         "--cache_max_gb -1.0: must be a finite number >= 0"),
    # -- --learning_rate auto, --top_lr_multiplier auto, recipes/lr_find.py ------------------------------------------
    Case("lr_not_a_number", "glue", ["--learning_rate", "fast"], 2, "invalid number (or auto) value: 'fast'"),
    Case("top_auto_without_top_k", "trainer", ["--top_lr_multiplier", "auto", "--preset", "baseline"], 2,
         "--top_lr_multiplier auto scans the multiplier of the top-k blocks, but top_k is 0"),
    Case("auto_with_gradual_unfreezing", "glue", ["--learning_rate", "auto", "--preset", "ulmfit"], 2,
         "auto with gradual unfreezing"),
    Case("lr_find_rule_unknown", "glue", ["--learning_rate", "auto", "--lr_find_rule", "best"], 2,
         "--lr_find_rule 'best': use one of centred_valley, valley, steep, minimum"),
    Case("lr_find_range_reversed", "trainer", ["--learning_rate", "auto", "--lr_find_min_lr", "1",
                                                "--lr_find_max_lr", "0.1"], 2, "need 0 < min < max"),
    Case("lr_find_steps_too_few", "glue", ["--learning_rate", "auto", "--lr_find_steps", "2"], 2,
         "--lr_find_steps 2: must be >= 5"),
    Case("lr_find_fallback_zero", "glue", ["--learning_rate", "auto", "--lr_find_fallback", "0"], 2,
         "--lr_find_fallback 0.0: must be a finite number > 0"),
    Case("lr_find_regression_unknown", "glue", ["--task_name", "stsb", "--learning_rate", "auto",
                                                "--lr_find_regression", "median"], 2,
         "--lr_find_regression 'median': use one of fallback, plain, offset"),
    Case("lr_find_regression_on_classification", "lr_find", ["--lr_find_regression", "plain"], 2,
         "--lr_find_regression plain says how a regression task finds its learning rate, but this task is a "
         "classification"),
    Case("lr_find_regression_without_auto", "trainer", ["--task_name", "stsb", "--lr_find_regression", "plain"], 2,
         "--lr_find_regression plain applies only with --learning_rate auto"),
    Case("lr_find_regression_with_a_given_lr", "glue", ["--task_name", "stsb", "--learning_rate", "1e-4",
                                                        "--top_lr_multiplier", "auto", "--lr_find_regression",
                                                        "fallback"], 2,
         "--lr_find_regression fallback says how --learning_rate auto finds the base LR, but it is given (0.0001)"),
    Case("lr_find_regression_fallback_in_lr_find", "lr_find", ["--task_name", "stsb", "--lr_find_regression",
                                                               "fallback"], 2,
         "--lr_find_regression fallback trains without a range test; recipes/lr_find.py runs one"),
    Case("lr_find_steps_on_regression_without_a_test", "glue", ["--task_name", "stsb", "--learning_rate", "auto",
                                                                "--lr_find_steps", "20"], 2,
         "--lr_find_steps: on a regression task --learning_rate auto runs no range test"),
    Case("lr_find_scan_unknown", "lr_find", ["--scan", "top,bottom"], 2, "unknown target(s) ['bottom']"),
    Case("lr_find_scan_top_without_top_k", "lr_find", ["--scan", "top", "--top_k", "0"], 2, "--scan top: top_k is 0"),
    Case("ablate_no_command", "ablate", [], 2, "the following arguments are required", base=False),
    Case("ablate_report_empty", "ablate", ["report", "{work}/empty"], 2, "no runs", base=False,
         setup=_empty_folder("empty")),
    Case("ablate_report_unknown_control", "ablate", ["report", "{root}/study", "--compare_to", "uniform"], 2,
         "--compare_to uniform: no such cell", base=False),
    # -- options that would do nothing, schedulers and their arguments (issue 25) ------------------------------------
    Case("cache_max_gb_without_cache", "glue", ["--cache_max_gb", "1"], 2,
         "--cache_max_gb 1.0 applies only with --cache_frozen"),
    Case("cache_dtype_without_cache", "trainer", ["--cache_dtype", "bfloat16"], 2,
         "--cache_dtype bfloat16 applies only with --cache_frozen"),
    Case("lr_find_steps_without_auto", "glue", ["--lr_find_steps", "50"], 2,
         "--lr_find_steps 50 applies only with --learning_rate auto"),
    Case("monitor_every_without_monitor", "trainer", ["--monitor_every", "5"], 2,
         "--monitor_every 5 applies only with --monitor"),
    Case("compile_backend_without_compile", "glue", ["--torch_compile_backend", "eager"], 2,
         "--torch_compile_backend eager applies only with --torch_compile"),
    Case("top_multiplier_with_top_k_0", "glue", ["--preset", "baseline", "--top_lr_multiplier", "10"], 2,
         "--top_lr_multiplier 10.0 multiplies the LR of the top_k blocks, but top_k is 0"),
    Case("unfreeze_unit_without_unfreezing", "trainer", ["--unfreeze_unit", "steps"], 2,
         "--unfreeze_unit steps sets the unit of gradual unfreezing"),
    Case("freeze_fraction_freezes_nothing", "glue", ["--freeze_fraction", "0.1"], 2, "freeze_fraction"),
    Case("class_weights_on_regression", "glue", ["--task_name", "stsb", "--class_weights", "auto"], 2,
         "--class_weights auto weighs classes, but this task is a regression"),
    Case("class_weights_on_regression_trainer", "trainer", ["--task_name", "stsb", "--class_weights", "auto"], 2,
         "--class_weights auto weighs classes, but this task is a regression"),
    Case("head_bias_on_regression", "trainer", ["--task_name", "stsb", "--head_bias_init", "prior"], 2,
         "--head_bias_init prior sets the head's bias to the class priors, but this task is a regression"),
    Case("reinit_into_frozen", "glue", ["--freeze_below", "3", "--reinit_top_layers", "2"], 2,
         "--reinit_top_layers 2 re-initialises blocks 3..4, but"),
    Case("scheduler_kwargs_not_json", "glue", ["--lr_scheduler_kwargs", "{{num_cycles: 2}}"], 2,
         "--lr_scheduler_kwargs '{{num_cycles: 2}}': not JSON"),
    Case("scheduler_kwargs_unknown_key", "trainer", ["--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs",
                                                      '{{"num_cycle": 2}}'], 2,
         "--lr_scheduler_type cosine does not take num_cycle; it takes"),
    Case("scheduler_kwargs_for_linear", "glue", ["--lr_scheduler_kwargs", '{{"num_cycles": 2}}'], 2,
         "--lr_scheduler_type linear takes no arguments"),
    Case("wsd_without_decay_steps", "trainer", ["--lr_scheduler_type", "warmup_stable_decay"], 2,
         "--lr_scheduler_type warmup_stable_decay: "),
    Case("plateau_with_warmup", "glue", ["--lr_scheduler_type", "reduce_lr_on_plateau", "--warmup_ratio", "0.1"], 2,
         "--lr_scheduler_type reduce_lr_on_plateau has no warmup"),
    Case("plateau_without_eval", "trainer", ["--lr_scheduler_type", "reduce_lr_on_plateau", "--eval_every_epoch",
                                              "False"], 2, "needs an evaluation after every epoch"),
    Case("option_abbreviated", "glue", ["--learning_r", "1e-3"], 2, "--learning_r"),
    Case("pad_multiple_with_max_length", "trainer", ["--pad_to_max_length", "--pad_to_multiple_of", "8"], 2,
         "--pad_to_multiple_of 8 applies to dynamic padding, but --pad_to_max_length pads every example"),
    Case("tokenizer_vocab_too_large", "glue", ["--tokenizer_name", "{root}/bigtok"], 2,
         "its vocabulary has 200 tokens but the embeddings of"),
    Case("tokenizer_without_pad", "trainer", ["--tokenizer_name", "{root}/nopad"], 2,
         "the tokenizer has neither a padding nor an end-of-sequence token"),
    Case("lora_alpha_without_r", "glue", ["--lora_alpha", "16"], 2, "--lora_alpha applies only with --lora_r"),
    Case("lora_targets_without_r", "trainer", ["--lora_target_modules", "query"], 2,
         "--lora_target_modules applies only with --lora_r"),
    Case("lora_r_zero", "glue", ["--lora_r", "0"], 2, "--lora_r 0: the LoRA rank must be an integer >= 1"),
    Case("lora_alpha_negative", "glue", ["--lora_r", "4", "--lora_alpha", "-1"], 2,
         "--lora_alpha -1.0: must be a finite number > 0"),
    Case("lora_dropout_one", "trainer", ["--lora_r", "4", "--lora_dropout", "1"], 2,
         "--lora_dropout 1.0: must be in [0, 1)"),
    Case("lora_targets_empty", "glue", ["--lora_r", "4", "--lora_target_modules", ","], 2, "no module names"),
    Case("lora_targets_not_in_model", "glue", ["--lora_r", "4", "--lora_target_modules", "q_proj"], 2,
         "--lora_target_modules: PEFT cannot place LoRA adapters on BertForSequenceClassification"),
    Case("lora_targets_not_in_model_trainer", "trainer", ["--lora_r", "4", "--lora_target_modules", "q_proj"], 2,
         "its linear modules are named"),
    Case("loraplus_without_lora", "glue", ["--loraplus_ratio", "16"], 2,
         "--loraplus_ratio 16.0 speeds up LoRA's B matrices, and there are none without --lora_r"),
    Case("loraplus_zero", "trainer", ["--lora_r", "4", "--loraplus_ratio", "0"], 2,
         "LayerwiseConfig.loraplus_ratio=0.0: must be finite and > 0"),
    Case("lora_with_cache", "glue", ["--lora_r", "4", "--preset", "top3x5-freeze", "--top_k", "2", "--cache_frozen"], 2,
         "--cache_frozen with --lora_r"),
    Case("output_holds_user_model", "glue", ["--save_model"], 2,
         "holds model (--save_model writes the fine-tuned model there), which hf-layerwise did not write",
         setup=lambda w, r: shutil.copytree(os.path.join(r, "model"), os.path.join(w, "out", "model"))),
    # -- resume trusts only what it can check --------------------------------------------------------------------------
    Case("resume_without_run_config", "glue", RESUME, 2, "no complete checkpoint in",
         setup=_chain(_copy_run("glue_run"), lambda w, r: [os.unlink(os.path.join(w, "out", c, "run_config.json"))
                                                           for c in ("step_2", "step_4")])),
    Case("resume_path_without_run_config", "trainer", ["--resume_from_checkpoint", "{out}/checkpoint-4"], 2,
         "checkpoint-4/run_config.json is missing", setup=_damage("trainer_run", "checkpoint-4", "run_config.json",
                                                                  "delete")),
    Case("resume_with_edited_data", "glue", [*DATA, *RESUME], 2, "(checkpoint: {{'train': '32 rows, sha256",
         setup=_chain(_copy_run("glue_run"), _write("data/RTE/train.tsv", RTE_ONE_CLASS.replace("entailment",
                                                                                              "not_entailment")))),
    Case("resume_other_folder_into_run", "glue", ["--resume_from_checkpoint", "{root}/glue_run/step_2"], 2,
         "continues the run of another folder, but --output_dir", setup=_copy_run("trainer_run")),
    # -- recipes/lr_find.py: training options refused ------------------------------------------------------------------
    Case("lr_find_with_epochs", "lr_find", ["--num_train_epochs", "5"], 2,
         "--num_train_epochs 5.0: recipes/lr_find.py runs range tests and does not train"),
    Case("lr_find_with_cache", "lr_find", ["--cache_frozen", "--freeze_below", "2"], 2,
         "--cache_frozen: recipes/lr_find.py runs the range tests on the whole model"),
    Case("lr_find_nothing_to_scan", "lr_find", ["--scan", ""], 2, "with --scan '': nothing to test"),
    # -- the sweep owns some options -----------------------------------------------------------------------------------
    Case("ablate_cell_output_dir", "ablate", ["run", "--tasks", "rte", "--cell", "mine=--output_dir {work}/x",
                                              "--out", "{out}", "--", "--model_name_or_path", "{model}"], 2,
         "--output_dir is set by the sweep", base=False),
    Case("ablate_forwarded_seed", "ablate", ["run", "--tasks", "rte", "--presets", "baseline", "--out", "{out}", "--",
                                             "--model_name_or_path", "{model}", "--seed", "7"], 2,
         "--seed is set by the sweep", base=False),
    Case("ablate_out_is_a_file", "ablate", ["run", "--tasks", "rte", "--presets", "baseline", "--out",
                                            "{work}/file"], 2, "file: exists and is not a folder", base=False,
         setup=_a_file("file")),
    Case("ablate_report_missing_folder", "ablate", ["report", "{work}/none"], 2, "none: no such folder", base=False),
    # -- python -m hf_layerwise --------------------------------------------------------------------------------------
    Case("cli_describe_missing", "cli", ["describe", "{work}/none"], 2, "none: no such model folder", base=False),
    Case("cli_describe_lora_targets_alone", "cli", ["describe", "{model}", "--lora-target-modules", "query"], 2,
         "--lora-target-modules applies only with --lora-r", base=False),
    Case("cli_describe_lora_r_zero", "cli", ["describe", "{model}", "--lora-r", "0"], 2,
         "--lora-r 0: the LoRA rank must be an integer >= 1", base=False),
    Case("cli_describe_lora_no_targets", "cli", ["describe", "{model}", "--lora-r", "2", "--lora-target-modules",
                                                 "q_proj"], 2, "PEFT cannot place LoRA adapters on", base=False),
    Case("cli_describe_loraplus_without_lora", "cli", ["describe", "{model}", "--loraplus_ratio", "8"], 2,
         "loraplus_ratio=8.0 speeds up LoRA B matrices", base=False),
    Case("cli_describe_top_k", "cli", ["describe", "{model}", "--top-k", "9"], 2, "top_k=9 is larger", base=False),
    Case("cli_describe_unknown_option", "cli", ["describe", "{model}", "--topk", "2"], 2, "--topk", base=False),
    Case("cli_describe_lr_find_missing", "cli", ["describe", "{model}", "--lr-find", "{work}/none.json"], 2,
         "--lr-find {work}/none.json: not a lr_find.json", base=False),
    Case("cli_report_missing", "cli", ["report", "{work}/none"], 2, "no health log", base=False),
    Case("cli_report_damaged_health", "cli", ["report", "{work}/h"], 2, "h/health.jsonl:1: not a health record",
         base=False, setup=_write("h/health.jsonl", '{{"step": 1, "depth')),
    Case("cli_unknown_command", "cli", ["frobnicate"], 2, "invalid choice: 'frobnicate'", base=False),
]


def _fill(args, fx, work):
    values = {"model": str(fx / "model"), "data": str(fx / "data"), "root": str(fx), "work": str(work),
              "out": str(work / "out")}
    return [a.format(**values) for a in args]


def _argv(case, fx, work):
    args = _fill(case.args, fx, work)
    if not case.base:
        return args
    base = ["--model_name_or_path", str(fx / "model"), "--data_dir", str(fx / "data"), "--task_name", "rte",
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--max_train_steps", "4",
            "--checkpointing_steps", "2", "--seed", "3", "--output_dir", str(work / "out")]
    given = {a for a in args if a.startswith("--")}
    out, i = [], 0
    while i < len(base):  # the case's own value of an option replaces the base one
        if base[i] in given or base[i] in case.drop or (case.program == "lr_find" and base[i] in (
                "--checkpointing_steps", "--max_train_steps")):  # lr_find.py does not train: refused there
            i += 2
            continue
        out += base[i:i + 2]
        i += 2
    return out + args


def _snapshot(folder):
    state = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            stat = os.stat(path)
            state[os.path.relpath(path, folder)] = None if os.path.isdir(path) else (stat.st_size, stat.st_mtime_ns)
    return state


@pytest.fixture(scope="module")
def study(fx):
    """A sweep folder with two runs (for the report cases)."""
    for cell in ("baseline", "top3x5"):
        folder = fx / "study" / "rte" / cell / "seed1"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"task": "rte", "seed": 1, "main_metric": "accuracy",
                                                         "metrics": {"accuracy": 0.6}, "majority_baseline":
                                                         {"accuracy": 0.5}}))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, fx, study, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    if case.setup:
        case.setup(str(work), str(fx))
    before = _snapshot(work)
    capsys.readouterr()
    code = run_cli(PROGRAMS[case.program], _argv(case, fx, work))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == case.code, err[-2000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert _fill([case.message], fx, work)[0] in errors[0], errors[0]
    assert _snapshot(work) == before, "the failed command wrote or changed files"


def test_cases_cover_every_program():
    assert len(CASES) >= 40
    assert {c.program for c in CASES} == set(PROGRAMS)


def test_diverging_run_stops_without_a_nonfinite_checkpoint(fx, tmp_path, capsys):
    """A learning rate far too high: the loss becomes non-finite, the run stops with exit code 1 before the update,
    writes no results and keeps only finite checkpoints."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(fx / "model"), "--data_dir", str(fx / "data"), "--task_name", "stsb",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e30", "--num_train_epochs", "3",
            "--checkpointing_steps", "1", "--max_grad_norm", "0", "--output_dir", str(out)]
    code = run_cli(glue_recipe.main, argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "is not finite; the run stops before the update" in errors[0], err
    assert not (out / "results.json").exists()
    saved = sorted(out.glob("step_*"))
    assert saved, "the first steps should have been checkpointed before the divergence"
    for checkpoint in saved:
        weights = load_file(str(checkpoint / "model.safetensors"))
        assert all(bool(t.isfinite().all()) for t in weights.values()), checkpoint
    # the same in the Trainer recipe (it would otherwise log the running average and go on)
    code = run_cli(glue_trainer.main, [*argv[:-1], str(tmp_path / "trainer")])
    err = capsys.readouterr().err
    assert code == 1 and "is not finite" in [line for line in err.splitlines() if line.startswith("error:")][0]
    assert not (tmp_path / "trainer" / "results.json").exists()


def test_latest_skips_a_damaged_newest_checkpoint(fx, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(fx / "glue_run", out)
    (out / "results.json").unlink()
    with open(out / "step_4" / "model.safetensors", "r+b") as f:
        f.truncate(100)
    argv = ["--model_name_or_path", str(fx / "model"), "--data_dir", str(fx / "data"), "--task_name", "rte",
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--max_train_steps", "4",
            "--checkpointing_steps", "2", "--seed", "3", "--output_dir", str(out), "--resume_from_checkpoint",
            "latest"]
    assert run_cli(glue_recipe.main, argv) == 0
    assert "skipping damaged checkpoint step_4" in caplog.text
    result = json.loads((out / "results.json").read_text())
    assert result["resumed_from"] == [str(out / "step_2")] and result["completed_steps"] == 4
    # and the resumed run is the finished one: same metrics and logged losses
    original = json.loads((fx / "glue_run" / "results.json").read_text())
    assert result["metrics"] == original["metrics"] and result["log_history"] == original["log_history"]


def test_overwrite_replaces_the_run_and_keeps_other_files(fx, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fx / "glue_run", out)
    (out / "status.json").write_text("{}")  # a sweep's file: not the run's
    old = (out / "results.json").stat().st_mtime_ns
    argv = ["--model_name_or_path", str(fx / "model"), "--data_dir", str(fx / "data"), "--task_name", "rte",
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--max_train_steps", "3",
            "--output_dir", str(out), "--overwrite_output_dir"]
    assert run_cli(glue_recipe.main, argv) == 0
    assert sorted(os.listdir(out)) == [".hf_layerwise.json", ".hf_layerwise.lock", "results.json", "status.json"]
    assert (out / "results.json").stat().st_mtime_ns != old
    assert json.loads((out / "results.json").read_text())["completed_steps"] == 3


def test_second_writer_into_the_same_folder_is_refused(fx, tmp_path):
    from hf_layerwise.glue.run_dir import RunFiles, check_output_dir, claim_output_dir

    out = tmp_path / "out"
    files = RunFiles({"results.json": "the results"})
    with claim_output_dir(str(out), files, check_output_dir(str(out), files)):  # this process is writing there
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "glue.py"), "--model_name_or_path",
                               str(fx / "model"), "--data_dir", str(fx / "data"), "--task_name", "rte",
                               "--max_train_steps", "2", "--output_dir", str(out)], env=ENV, capture_output=True,
                              text=True, timeout=300)
    assert proc.returncode == 2
    assert f"error: --output_dir {out}: another run is writing to it (pid {os.getpid()} since " in proc.stderr


def test_entry_points_print_one_line(fx, tmp_path):
    """The real commands: one line, the exit code, no traceback; --debug adds the traceback."""
    recipes = os.path.join(ROOT, "recipes")
    commands = [
        ([sys.executable, os.path.join(recipes, "glue.py"), "--task_name", "rte", "--model_name_or_path", "m",
          "--output_dir", str(tmp_path / "o"), "--max_train_samples", "0"], 2, "--max_train_samples 0"),
        ([sys.executable, os.path.join(recipes, "glue_trainer.py"), "--task_name", "rte", "--model_name_or_path",
          str(tmp_path / "none"), "--output_dir", str(tmp_path / "o")], 2, "no such folder"),
        ([sys.executable, os.path.join(recipes, "ablate.py"), "run", "--tasks", "rte", "--cell", "x=--top_k -1",
          "--out", str(tmp_path / "s"), "--", "--model_name_or_path", "m"], 2, "cell x (task rte)"),
    ]  # python -m hf_layerwise as a command: tests/test_cli.py
    debug = commands[0][0] + ["--debug"]
    started = [Started(cmd, env=ENV) for cmd in [c[0] for c in commands] + [debug]]  # all at once
    for (cmd, code, message), run in zip(commands, started):
        proc = run.wait(check=False, timeout=300)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == code and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    proc = started[-1].wait(check=False, timeout=300)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and proc.stderr.rstrip().splitlines()[-1].startswith(
        "error: --max_train_samples 0")
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_a_config_without_pad_token_id_takes_the_tokenizers(fx, tmp_path, capsys):
    """GPT-2's config has no pad_token_id, which its classification head needs to find each example's last token
    ("Cannot handle batch sizes > 1 if no padding token is defined" at the first batch): the tokenizer's is used."""
    import transformers as T

    folder = tmp_path / "gpt2"
    T.GPT2Model(T.GPT2Config(vocab_size=40, n_embd=32, n_layer=4, n_head=2, n_positions=128)).save_pretrained(folder)
    shutil.copy(fx / "model" / "vocab.txt", folder)
    T.BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    argv = ["--model_name_or_path", str(folder), "--data_dir", str(fx / "data"), "--task_name", "rte",
            "--per_device_train_batch_size", "8", "--max_train_steps", "2", "--preset", "baseline", "--output_dir",
            str(tmp_path / "out")]
    assert run_cli(glue_recipe.main, argv) == 0, capsys.readouterr().err[-2000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["completed_steps"] == 2


def test_report_skips_the_incomplete_last_record_of_a_killed_run(tmp_path):
    from hf_layerwise.report import load_health

    (tmp_path / "health.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "dep')
    with pytest.warns(UserWarning, match=r"health.jsonl:3: the last record is incomplete"):
        assert load_health(str(tmp_path)) == [{"step": 1}, {"step": 2}]
    (tmp_path / "health.jsonl").write_text('{"step": 1}\n{"step": 2, "dep\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"health.jsonl:2: not a health record"):
        load_health(str(tmp_path))
