"""Try bad inputs and faults as a user would, and sort what each one did (not a test: run by hand).

    python tests/bad_input_probe.py                 # every case, a table and the count per outcome
    python tests/bad_input_probe.py --only race     # the cases whose id contains 'race'
    python tests/bad_input_probe.py --root /tmp/old # the same cases against another checkout (before/after counts)

Every case runs as a real command (``python recipes/<program>.py ...``, ``python -m hf_layerwise ...`` or a snippet of
the Python API) in a folder of its own, and ends in one of:

* ``good``: what the case expects (one ``error:`` line naming ``expect`` before anything was written, a warning, or a
  correct run), and nothing that existed before was lost;
* ``lost``: a file that existed before (a finished run, the user's own files) was removed or changed, where the case
  does not allow it;
* ``silent``: exit 0 although the input should have been refused (or warned about);
* ``unexpected``: the one line is the catch-all "(unexpected; ...)" that names neither the option nor the input;
* ``wrong``: refused, but the line does not name what the case expects (or the exit code is not 1/2, a traceback);

``tests/test_bad_inputs.py`` keeps the cases that matter as table rows checked in CI; this probe is how they were
found, and how the before/after counts in the closing note of issue 25 were made.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


@dataclass
class Case:
    id: str
    cls: str  # lost, silent, unexpected, misleading, other: the class of issue 25 it probes
    program: str  # glue, trainer, ablate, lr_find, cli, api
    args: list[str]  # {model} {data} {fx} {out} {work} are filled in; glue/trainer/lr_find get the base arguments
    expect: str  # "refuse:<text>" (one error line containing text), "ok", "warn:<text>", "ok|refuse:<text>"
    setup: str = ""  # name of a setup in SETUPS
    pre: str = ""  # Python run in the child before main (monkeypatches: faults)
    base: bool = True
    drop: tuple = ()
    keep: tuple = ("*",)  # paths (relative to the case folder) that must survive unchanged; "*" = all, when it fails
    overwritten: bool = False  # a successful run may replace the old run in out/ (--overwrite_output_dir)
    needs: tuple = ()  # paths that must exist afterwards, whatever the exit code (results before optional artifacts)


BASE = ["--model_name_or_path", "{model}", "--data_dir", "{data}", "--task_name", "rte", "--per_device_train_batch_size",
        "8", "--learning_rate", "1e-3", "--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "3",
        "--output_dir", "{out}"]


def fixtures(fx: str, root: str) -> None:
    """Tiny models (BERT with dropout, its tokenizer with a larger vocabulary, ALBERT, GPT-2), GLUE folders and two
    finished runs (glue.py and the Trainer recipe, checkpoints at steps 2 and 4), made by the checkout under test."""
    if os.path.exists(os.path.join(fx, "done")):
        return
    code = f"""
import os, sys, shutil
sys.path.insert(0, {HERE!r})
from glue_fixtures import make_model_dir, write_glue_task, WORDS, SPECIAL
import transformers as T
fx = {fx!r}
make_model_dir(os.path.join(fx, "model"), dropout=0.1)
os.makedirs(os.path.join(fx, "bigvocab"), exist_ok=True)
with open(os.path.join(fx, "bigvocab", "vocab.txt"), "w") as f:
    f.write("\\n".join(SPECIAL + WORDS + ['"', ".", ","] + [f"extra{{i}}" for i in range(200)]) + "\\n")
T.BertTokenizer(vocab=os.path.join(fx, "bigvocab", "vocab.txt")).save_pretrained(os.path.join(fx, "bigvocab"))
for task in ("rte", "stsb", "mrpc", "cola"):
    write_glue_task(os.path.join(fx, "data"), task, n_train=32, n_dev=8)
albert = T.AlbertConfig(vocab_size=40, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
T.AlbertModel(albert).save_pretrained(os.path.join(fx, "albert"))
shutil.copy(os.path.join(fx, "model", "vocab.txt"), os.path.join(fx, "albert"))
T.BertTokenizer(vocab=os.path.join(fx, "albert", "vocab.txt")).save_pretrained(os.path.join(fx, "albert"))
gpt2 = T.GPT2Config(vocab_size=40, n_embd=32, n_layer=4, n_head=2, n_positions=128)
T.GPT2Model(gpt2).save_pretrained(os.path.join(fx, "gpt2"))
T.BertTokenizer(vocab=os.path.join(fx, "model", "vocab.txt")).save_pretrained(os.path.join(fx, "gpt2"))
"""
    _python(["-c", code], root)
    base = [a.format(model=os.path.join(fx, "model"), data=os.path.join(fx, "data"), out="{out}") for a in BASE]
    for program, name in (("glue", "glue_run"), ("trainer", "trainer_run")):
        argv = [a.format(out=os.path.join(fx, name)) for a in base]
        proc = _python([os.path.join(root, "recipes", SCRIPTS[program]), *argv], root)
        assert proc.returncode == 0, proc.stderr[-3000:]
    open(os.path.join(fx, "done"), "w").close()


SCRIPTS = {"glue": "glue.py", "trainer": "glue_trainer.py", "ablate": "ablate.py", "lr_find": "lr_find.py"}


def _env(root: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root, "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _python(argv: list[str], root: str, cwd: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], env=_env(root), cwd=cwd or root, capture_output=True, text=True,
                          timeout=timeout)


# -- setups: each makes the case's folder (work) from the fixtures (fx) ---------------------------------------------
def copy_run(name, dest="out"):
    return lambda work, fx: shutil.copytree(os.path.join(fx, name), os.path.join(work, dest))


def write(rel, text):
    def setup(work, fx):
        path = os.path.join(work, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return setup


def chain(*steps):
    def setup(work, fx):
        for step in steps:
            step(work, fx)
    return setup


def copy(src, rel):
    return lambda work, fx: shutil.copytree(os.path.join(fx, src), os.path.join(work, rel))


def remove(rel):
    def setup(work, fx):
        path = os.path.join(work, rel)
        shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    return setup


def edit_data(task_dir, how):
    """A copy of the fixtures' data in work/data with RTE's train.tsv edited: 'half' (first half of the rows) or
    'flip' (every label flipped)."""
    def setup(work, fx):
        shutil.copytree(os.path.join(fx, "data"), os.path.join(work, "data"))
        path = os.path.join(work, "data", task_dir, "train.tsv")
        lines = open(path).read().splitlines()
        if how == "half":
            lines = lines[:1 + (len(lines) - 1) // 2]
        else:
            swap = {"entailment": "not_entailment", "not_entailment": "entailment"}
            lines = [lines[0]] + ["\t".join(l.split("\t")[:-1] + [swap[l.split("\t")[-1]]]) for l in lines[1:]]
        open(path, "w").write("\n".join(lines) + "\n")
    return setup


SETUPS = {
    "glue_run": copy_run("glue_run"),
    "trainer_run": copy_run("trainer_run"),
    "glue_run_other": copy_run("glue_run", "other"),
    "glue_run_and_other": chain(copy_run("glue_run"), copy_run("glue_run", "other")),
    "glue_run_data_inside": chain(copy_run("glue_run"), copy("data", "out/glue")),
    "glue_run_model_inside": chain(copy_run("glue_run"), copy("model", "out/model")),
    "model_inside": copy("model", "out/model"),
    "notes": write("out/notes.txt", "my notes\n"),
    "runs_notes": write("out/runs/notes.txt", "my notes\n"),
    "glue_run_notes": chain(copy_run("glue_run"), write("out/notes.txt", "my notes\n")),
    "user_results": write("out/results.json", '{"mine": true}\n'),
    "user_step": write("out/step_2/weights.txt", "mine\n"),
    "glue_run_no_run_config": chain(copy_run("glue_run"), remove("out/results.json"), remove("out/step_4/run_config.json"),
                                    remove("out/step_2/run_config.json")),
    "trainer_run_no_run_config": chain(copy_run("trainer_run"), remove("out/results.json"),
                                       remove("out/checkpoint-4/run_config.json"),
                                       remove("out/checkpoint-2/run_config.json")),
    "glue_run_half_data": chain(copy_run("glue_run"), remove("out/results.json"), edit_data("RTE", "half")),
    "glue_run_flipped": chain(copy_run("glue_run"), remove("out/results.json"), edit_data("RTE", "flip")),
    "glue_run_partial": chain(copy_run("glue_run"), remove("out/results.json")),
    "damaged_results": chain(write("study/rte/baseline/seed1/results.json", '{"task": "rte", "seed": 1, '
                                   '"main_metric": "accuracy", "metrics": {"accuracy": 0.6}, "majority_baseline": '
                                   '{"accuracy": 0.5}}'),
                             write("study/rte/top3x5/seed1/results.json", '{"task": "rte", "metr')),
    "data_file": write("file.txt", "x\n"),
}

RACE = """
import atexit, os, sys
from hf_layerwise.errors import run_cli
FIRST = list(sys.argv[1:])
FIRST[FIRST.index("--seed") + 1] = "4"
OUT = FIRST[FIRST.index("--output_dir") + 1]
_config = program.model_config
_done = []
def model_config(args):  # this run has checked the folder; another run takes it and finishes before this one claims it
    if _done:  # the other run's own call
        return _config(args)
    _done.append(1)
    assert run_cli(program.main, FIRST) == 0
    first = open(os.path.join(OUT, "results.json")).read()
    def check():
        if open(os.path.join(OUT, "results.json")).read() != first:
            open(os.path.join(os.path.dirname(OUT), "LOST"), "w").write("the first run's results.json was replaced")
    atexit.register(check)
    return _config(args)
program.model_config = model_config
"""

SAVE_FAILS = """
import transformers
def save_pretrained(self, *a, **k):
    raise OSError(30, "Read-only file system")
if program.__name__ == "glue_trainer":  # the Trainer's checkpoints save through save_pretrained too: only the final save
    _save_model = transformers.Trainer.save_model
    def save_model(self, output_dir=None, _internal_call=False):
        if not _internal_call:
            save_pretrained(self)
        return _save_model(self, output_dir, _internal_call)
    transformers.Trainer.save_model = save_model
else:
    transformers.PreTrainedModel.save_pretrained = save_pretrained
"""

ALL = ["--max_train_steps", "4"]
C = Case
CASES = [
    # -- LOST: a finished run or the user's files -----------------------------------------------------------------
    C("overwrite_plateau", "lost", "glue", ["--overwrite_output_dir", "--lr_scheduler_type", "reduce_lr_on_plateau"],
      "ok|refuse:reduce_lr_on_plateau", "glue_run", overwritten=True),
    C("overwrite_bigvocab", "lost", "glue", ["--overwrite_output_dir", "--tokenizer_name", "{fx}/bigvocab"],
      "refuse:--tokenizer_name", "glue_run"),
    C("overwrite_bigvocab_trainer", "lost", "trainer", ["--overwrite_output_dir", "--tokenizer_name",
                                                          "{fx}/bigvocab"], "refuse:--tokenizer_name", "trainer_run"),
    C("overwrite_wsd_trainer", "lost", "trainer", ["--overwrite_output_dir", "--lr_scheduler_type",
                                                     "warmup_stable_decay"], "refuse:num_decay_steps", "trainer_run"),
    C("overwrite_nan_step1", "lost", "glue", ["--overwrite_output_dir", "--learning_rate", "1e30", "--max_grad_norm",
                                              "0", "--checkpointing_steps", "50"], "refuse:not finite", "glue_run"),
    C("overwrite_nan_step1_trainer", "lost", "trainer", ["--overwrite_output_dir", "--learning_rate", "1e30",
                                                         "--max_grad_norm", "0", "--checkpointing_steps", "50"],
      "refuse:not finite", "trainer_run"),
    C("overwrite_data_named_glue", "lost", "glue", ["--overwrite_output_dir", "--data_dir", "{out}/glue"], "ok",
      "glue_run_data_inside", keep=("out/glue",), overwritten=True),
    C("overwrite_model_inside", "lost", "glue", ["--overwrite_output_dir", "--model_name_or_path", "{out}/model"],
      "ok", "glue_run_model_inside", keep=("out/model",), overwritten=True),
    C("overwrite_model_inside_save", "lost", "glue", ["--overwrite_output_dir", "--model_name_or_path",
                                                      "{out}/model", "--save_model"], "refuse:model",
      "glue_run_model_inside"),
    C("save_model_over_base_model", "lost", "glue", ["--model_name_or_path", "{out}/model", "--save_model"],
      "refuse:model", "model_inside"),
    C("tracker_over_data_named_glue", "lost", "glue", ["--data_dir", "{out}/glue", "--report_to", "tensorboard"],
      "refuse:glue", "glue_run_data_inside"),
    C("race_two_runs", "lost", "glue", [], "refuse:--output_dir", pre=RACE),
    C("race_two_runs_trainer", "lost", "trainer", [], "refuse:--output_dir", pre=RACE),
    C("resume_other_into_finished", "lost", "glue", ["--resume_from_checkpoint", "{work}/other/step_2"],
      "refuse:--output_dir", "glue_run_and_other"),
    C("resume_other_into_empty", "lost", "glue", ["--resume_from_checkpoint", "{work}/other/step_2"], "ok",
      "glue_run_other"),
    C("ablate_cell_output_dir", "lost", "ablate", ["run", "--tasks", "rte", "--cell", "mine=--preset top3x5 "
                                                  "--output_dir {work}/x", "--seeds", "1-2", "--out", "{work}/s", "--",
                                                  "--model_name_or_path", "{model}", "--data_dir", "{data}",
                                                  "--max_train_steps", "2"], "refuse:--output_dir", base=False),
    C("ablate_cell_seed", "silent", "ablate", ["run", "--tasks", "rte", "--cell", "mine=--seed 7", "--seeds", "1-2",
                                               "--out", "{work}/s", "--", "--model_name_or_path", "{model}",
                                               "--data_dir", "{data}", "--max_train_steps", "2"], "refuse:--seed",
      base=False),
    C("ablate_forwarded_output_dir", "lost", "ablate", ["run", "--tasks", "rte", "--presets", "baseline", "--seeds",
                                                        "1-2", "--out", "{work}/s", "--", "--model_name_or_path",
                                                        "{model}", "--data_dir", "{data}", "--output_dir", "{work}/x",
                                                        "--max_train_steps", "2"], "refuse:--output_dir", base=False),
    C("ablate_cell_task", "silent", "ablate", ["run", "--tasks", "rte,mrpc", "--cell", "m=--task_name rte", "--out",
                                               "{work}/s", "--", "--model_name_or_path", "{model}"],
      "refuse:--task_name", base=False),
    C("ablate_cell_overwrite", "lost", "ablate", ["run", "--tasks", "rte", "--cell", "m=--overwrite_output_dir",
                                                  "--out", "{work}/s", "--", "--model_name_or_path", "{model}"],
      "refuse:--overwrite_output_dir", base=False),
    C("ablate_cell_resume", "silent", "ablate", ["run", "--tasks", "rte", "--cell", "m=--resume_from_checkpoint latest",
                                                 "--out", "{work}/s", "--", "--model_name_or_path", "{model}"],
      "refuse:--resume_from_checkpoint", base=False),
    C("ablate_cell_abbreviated_seed", "silent", "ablate", ["run", "--tasks", "rte", "--cell", "m=--see 7", "--out",
                                                           "{work}/s", "--", "--model_name_or_path", "{model}"],
      "refuse:--see", base=False),
    C("save_model_fails", "lost", "glue", ["--save_model", "--checkpointing_steps", "50"],
      "refuse:--save_model", pre=SAVE_FAILS, needs=("out/results.json",)),
    C("save_model_fails_trainer", "lost", "trainer", ["--save_model", "--checkpointing_steps", "50"],
      "refuse:--save_model", pre=SAVE_FAILS, needs=("out/results.json",)),
    C("overwrite_keeps_user_notes", "lost", "glue", ["--overwrite_output_dir"], "ok", "glue_run_notes",
      keep=("out/notes.txt",), overwritten=True),
    C("user_results_json", "lost", "glue", ["--overwrite_output_dir"], "refuse:results.json", "user_results"),
    C("user_step_folder", "lost", "glue", ["--overwrite_output_dir"], "refuse:step_2", "user_step"),
    C("overwrite_trainer_with_glue_run", "other", "trainer", ["--overwrite_output_dir"], "ok", "glue_run",
      overwritten=True),
    C("lr_find_into_glue_run", "other", "lr_find", ["--scan", ""], "refuse:--output_dir", "glue_run"),
    C("lr_find_scan_empty", "unexpected", "lr_find", ["--scan", ""], "ok"),
    C("lr_find_fixed_lr_no_scan", "silent", "lr_find", ["--scan", "", "--learning_rate", "1e-4"], "refuse:--scan"),
    C("lr_find_resume", "silent", "lr_find", ["--resume_from_checkpoint", "latest"], "refuse:--resume_from_checkpoint"),
    C("lr_find_save_model", "silent", "lr_find", ["--save_model"], "refuse:--save_model"),
    C("lr_find_monitor", "silent", "lr_find", ["--monitor"], "refuse:--monitor"),
    C("lr_find_early_stopping", "silent", "lr_find", ["--early_stopping_patience", "2"],
      "refuse:--early_stopping_patience"),
    C("lr_find_checkpointing", "silent", "lr_find", [], "refuse:--checkpointing_steps"),
    # -- SILENT: options that do nothing, resume that trusts what it cannot check ----------------------------------
    C("cache_max_gb_alone", "silent", "glue", ["--cache_max_gb", "2"], "refuse:--cache_max_gb"),
    C("cache_max_gb_alone_trainer", "silent", "trainer", ["--cache_max_gb", "2"], "refuse:--cache_max_gb"),
    C("cache_dtype_alone", "silent", "glue", ["--cache_dtype", "float32"], "refuse:--cache_dtype"),
    C("lr_find_steps_alone", "silent", "glue", ["--lr_find_steps", "20"], "refuse:--lr_find_steps"),
    C("lr_find_rule_alone", "silent", "trainer", ["--lr_find_rule", "steep"], "refuse:--lr_find_rule"),
    C("lr_find_min_alone", "silent", "glue", ["--lr_find_min_lr", "1e-6"], "refuse:--lr_find_min_lr"),
    C("lr_find_max_alone", "silent", "glue", ["--lr_find_max_lr", "1e-2"], "refuse:--lr_find_max_lr"),
    C("lr_find_fallback_alone", "silent", "glue", ["--lr_find_fallback", "2e-5"], "refuse:--lr_find_fallback"),
    C("top_mult_baseline", "silent", "glue", ["--preset", "baseline", "--top_lr_multiplier", "5"],
      "refuse:--top_lr_multiplier"),
    C("top_mult_top_k_0", "silent", "trainer", ["--top_k", "0", "--top_lr_multiplier", "8"],
      "refuse:--top_lr_multiplier"),
    C("describe_top_mult_top_k_0", "silent", "cli", ["describe", "{model}", "--top_k", "0", "--top_lr_multiplier",
                                                     "8"], "refuse:top_lr_multiplier", base=False),
    C("unfreeze_unit_alone", "silent", "glue", ["--unfreeze_unit", "steps"], "refuse:--unfreeze_unit"),
    C("describe_unfreeze_unit_alone", "silent", "cli", ["describe", "{model}", "--unfreeze_unit", "steps"],
      "refuse:unfreeze_unit", base=False),
    C("reinit_into_frozen", "silent", "glue", ["--reinit_top_layers", "3", "--freeze_below", "2", "--top_k", "1"],
      "refuse:--reinit_top_layers"),
    C("reinit_into_frozen_cached", "silent", "glue", ["--reinit_top_layers", "3", "--freeze_below", "2", "--top_k",
                                                      "1", "--cache_frozen"], "refuse:--reinit_top_layers"),
    C("reinit_into_frozen_trainer", "silent", "trainer", ["--reinit_top_layers", "4", "--freeze_below", "1",
                                                          "--top_k", "1"], "refuse:--reinit_top_layers"),
    C("freeze_fraction_freezes_nothing", "silent", "glue", ["--freeze_fraction", "0.1"], "refuse:freeze_fraction"),
    C("describe_freeze_fraction_nothing", "silent", "cli", ["describe", "{model}", "--freeze_fraction", "0.2"],
      "refuse:freeze_fraction", base=False),
    C("freeze_embeddings_redundant", "silent", "glue", ["--freeze_below", "2", "--top_k", "1", "--freeze_embeddings"],
      "refuse:--freeze_embeddings"),
    C("compile_backend_alone", "silent", "glue", ["--torch_compile_backend", "eager"], "refuse:--torch_compile_backend"),
    C("monitor_every_alone", "silent", "glue", ["--monitor_every", "10"], "refuse:--monitor_every"),
    C("monitor_every_alone_trainer", "silent", "trainer", ["--monitor_every", "10"], "refuse:--monitor_every"),
    C("pad_multiple_with_max_length", "silent", "glue", ["--pad_to_max_length", "--pad_to_multiple_of", "8"],
      "refuse:--pad_to_multiple_of"),
    C("head_bias_prior_stsb", "silent", "glue", ["--task_name", "stsb", "--head_bias_init", "prior"],
      "refuse:--head_bias_init"),
    C("head_bias_prior_stsb_trainer", "silent", "trainer", ["--task_name", "stsb", "--head_bias_init", "prior"],
      "refuse:--head_bias_init"),
    C("checkpointing_beyond_the_run", "silent", "glue", ["--checkpointing_steps", "500"], "warn:--checkpointing_steps"),
    C("resume_no_run_config", "silent", "glue", ["--resume_from_checkpoint", "latest", "--learning_rate", "5e-4"],
      "refuse:run_config.json", "glue_run_no_run_config"),
    C("resume_no_run_config_trainer", "silent", "trainer", ["--resume_from_checkpoint", "latest"],
      "refuse:run_config.json", "trainer_run_no_run_config"),
    C("resume_half_data", "silent", "glue", ["--resume_from_checkpoint", "latest", "--data_dir", "{work}/data"],
      "refuse:data", "glue_run_half_data"),
    C("resume_flipped_labels", "silent", "glue", ["--resume_from_checkpoint", "latest", "--data_dir", "{work}/data"],
      "refuse:data", "glue_run_flipped"),
    C("resume_same_data", "other", "glue", ["--resume_from_checkpoint", "latest"], "ok", "glue_run_partial"),
    C("resume_other_lr", "other", "glue", ["--resume_from_checkpoint", "latest", "--learning_rate", "5e-4"],
      "refuse:--learning_rate", "glue_run_partial"),
    C("resume_trainer_layout_in_glue", "misleading", "glue", ["--resume_from_checkpoint", "{work}/out/checkpoint-2"],
      "refuse:checkpoint-2", "trainer_run"),
    C("resume_glue_layout_in_trainer", "misleading", "trainer", ["--resume_from_checkpoint", "{work}/out/step_2"],
      "refuse:step_2", "glue_run"),
    C("resume_relative_to_output_dir", "misleading", "glue", ["--resume_from_checkpoint", "step_2"],
      "refuse:step_2", "glue_run_partial"),
    C("report_damaged_results", "silent", "ablate", ["report", "{work}/study"], "warn:top3x5", "damaged_results",
      base=False, keep=()),
    C("create_optimizer_hand_frozen", "silent", "api", ["""
import warnings, torch
from conftest import tiny_model
from hf_layerwise import LayerwiseConfig, create_optimizer
m = tiny_model("bert")
for p in m.bert.pooler.parameters(): p.requires_grad_(False)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    create_optimizer(m, LayerwiseConfig.preset("baseline"), lr=1e-4)
frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
print("kept frozen:", frozen, "; warnings:", [str(x.message) for x in w])
"""], "warn:pooler", base=False),
    # -- the Python API: wrong types end in an error that names the field -------------------------------------------
    *[C(f"api_{field}_{label}", "unexpected", "api", [f"""
from hf_layerwise import LayerwiseConfig
try:
    LayerwiseConfig({field}={value})
except Exception as err:
    print(f"error: {{type(err).__name__}}: {{err}}" if isinstance(err, ValueError) else
          f"error: {{type(err).__name__}}: {{err}} (unexpected;)")
    raise SystemExit(2)
"""], f"refuse:{field}", base=False)
      for field, value, label in [("freeze_fraction", '"0.5"', "str"), ("layer_decay", '"0.9"', "str"),
                                  ("weight_decay", "None", "none"), ("max_grad_norm", '"1"', "str"),
                                  ("cache_frozen", '"no"', "str"), ("top_k", "True", "bool"),
                                  ("top_k", "2.0", "float"), ("freeze_below", '"2"', "str"),
                                  ("unfreeze_every", "1.5", "float"), ("head_lr_multiplier", '"2"', "str"),
                                  ("freeze_embeddings", '"yes"', "str"), ("unfreeze_unit", '"epoch"', "typo"),
                                  ("top_lr_multiplier", "None", "none"), ("freeze_fraction", "float('nan')", "nan"),
                                  ("weight_decay", "-0.1", "negative")]],
    # -- UNEXPECTED / MISLEADING -----------------------------------------------------------------------------------
    C("class_weights_stsb", "unexpected", "glue", ["--task_name", "stsb", "--class_weights", "auto"],
      "refuse:--class_weights"),
    C("class_weights_stsb_trainer", "unexpected", "trainer", ["--task_name", "stsb", "--class_weights", "auto"],
      "refuse:--class_weights"),
    C("plateau_glue", "unexpected", "glue", ["--lr_scheduler_type", "reduce_lr_on_plateau", "--warmup_ratio", "0"],
      "ok|refuse:reduce_lr_on_plateau"),
    C("plateau_warmup_glue", "silent", "glue", ["--lr_scheduler_type", "reduce_lr_on_plateau", "--warmup_ratio",
                                                "0.2"], "refuse:--warmup_ratio"),
    C("plateau_no_eval_trainer", "unexpected", "trainer", ["--lr_scheduler_type", "reduce_lr_on_plateau",
                                                           "--eval_every_epoch", "False", "--warmup_ratio", "0"],
      "refuse:--eval_every_epoch"),
    C("wsd_glue", "unexpected", "glue", ["--lr_scheduler_type", "warmup_stable_decay"], "refuse:num_decay_steps"),
    C("wsd_glue_kwargs", "unexpected", "glue", ["--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs",
                                                '{"num_decay_steps": 2}'], "ok"),
    C("wsd_trainer_kwargs", "unexpected", "trainer", ["--lr_scheduler_type", "warmup_stable_decay",
                                                      "--lr_scheduler_kwargs", '{"num_decay_steps": 2}'], "ok"),
    C("cosine_min_lr_glue", "unexpected", "glue", ["--lr_scheduler_type", "cosine_with_min_lr"],
      "refuse:min_lr"),
    C("cosine_min_lr_trainer_kwargs", "unexpected", "trainer", ["--lr_scheduler_type", "cosine_with_min_lr",
                                                                "--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}'], "ok"),
    C("cosine_warmup_min_lr_glue", "unexpected", "glue", ["--lr_scheduler_type", "cosine_warmup_with_min_lr"],
      "ok|refuse:min_lr"),
    C("greedy_glue", "unexpected", "glue", ["--lr_scheduler_type", "greedy"], "ok|refuse:greedy"),
    C("greedy_trainer", "unexpected", "trainer", ["--lr_scheduler_type", "greedy"], "ok|refuse:greedy"),
    C("polynomial_glue", "other", "glue", ["--lr_scheduler_type", "polynomial"], "ok"),
    C("inverse_sqrt_trainer", "other", "trainer", ["--lr_scheduler_type", "inverse_sqrt"], "ok"),
    C("restarts_glue", "other", "glue", ["--lr_scheduler_type", "cosine_with_restarts"], "ok"),
    C("kwargs_not_json", "unexpected", "glue", ["--lr_scheduler_kwargs", "{num_cycles: 2}"],
      "refuse:--lr_scheduler_kwargs"),
    C("kwargs_unknown_key", "unexpected", "glue", ["--lr_scheduler_type", "cosine", "--lr_scheduler_kwargs",
                                                    '{"num_cycle": 2}'], "refuse:num_cycle"),
    C("kwargs_for_linear", "silent", "glue", ["--lr_scheduler_kwargs", '{"num_cycles": 2}'],
      "refuse:--lr_scheduler_kwargs"),
    C("albert_baseline", "misleading", "glue", ["--model_name_or_path", "{fx}/albert", "--preset", "baseline"],
      "refuse:ALBERT"),
    C("albert_baseline_hint", "misleading", "glue", ["--model_name_or_path", "{fx}/albert", "--preset", "baseline"],
      "refuse:run_glue"),
    C("gpt2_no_pad_token", "unexpected", "glue", ["--model_name_or_path", "{fx}/gpt2", "--preset", "baseline"],
      "ok|refuse:pad"),
    C("runs_notes_glue", "misleading", "glue", [], "ok", "runs_notes", keep=("out/runs/notes.txt",)),
    C("runs_notes_trainer", "misleading", "trainer", [], "ok", "runs_notes", keep=("out/runs/notes.txt",)),
    C("runs_notes_trainer_tensorboard", "misleading", "trainer", ["--report_to", "tensorboard"], "refuse:runs",
      "runs_notes"),
    C("results_mode", "other", "api", ["""
import os, stat, tempfile
from hf_layerwise.glue.run_dir import write_json_atomic
os.umask(0o022)
d = tempfile.mkdtemp()
write_json_atomic(os.path.join(d, "r.json"), {})
mode = stat.S_IMODE(os.stat(os.path.join(d, "r.json")).st_mode)
print(oct(mode))
if mode != 0o644:
    print(f"error: results written with mode {oct(mode)}, umask says 0o644")
    raise SystemExit(3)
"""], "ok", base=False),
    C("seed_too_large", "unexpected", "glue", ["--seed", str(2**40)], "refuse:--seed"),
    C("seed_too_large_trainer", "unexpected", "trainer", ["--seed", str(2**40)], "refuse:--seed"),
    C("model_is_a_file", "misleading", "glue", ["--model_name_or_path", "{work}/file.txt"], "refuse:file.txt",
      "data_file"),
    C("data_dir_is_a_file", "misleading", "glue", ["--data_dir", "{work}/file.txt"], "refuse:file.txt", "data_file"),
    C("data_dir_missing", "misleading", "glue", ["--data_dir", "{work}/none"], "refuse:none"),
    C("train_file_missing", "misleading", "glue", ["--train_file", "{work}/t.csv", "--validation_file",
                                                   "{work}/v.csv"], "refuse:t.csv", drop=("--data_dir",)),
    C("train_file_no_label", "misleading", "glue", ["--train_file", "{work}/t.csv", "--validation_file",
                                                    "{work}/t.csv"], "refuse:label", drop=("--data_dir",),
      setup="no_label_csv"),
    C("eval_batch_0", "other", "glue", ["--per_device_eval_batch_size", "0"], "refuse:--per_device_eval_batch_size"),
    C("accumulation_beyond_epoch", "other", "glue", ["--gradient_accumulation_steps", "16", "--max_train_steps", "2"],
      "ok|warn:--gradient_accumulation_steps"),
    C("epochs_half", "other", "glue", ["--num_train_epochs", "0.5"], "ok", drop=("--max_train_steps",)),
    C("task_upper", "other", "glue", ["--task_name", "RTE"], "ok"),
    C("report_to_wandb_missing", "other", "glue", ["--report_to", "wandb"], "ok|refuse:wandb"),
    C("max_seq_len_huge", "other", "glue", ["--max_seq_length", "100000"], "refuse:--max_seq_length"),
    C("hub_name_offline", "misleading", "glue", ["--model_name_or_path", "bert-base-uncased"],
      "refuse:HF_HUB_OFFLINE"),
    C("resume_latest_empty", "other", "glue", ["--resume_from_checkpoint", "latest"], "ok"),
    C("cache_with_ulmfit", "other", "glue", ["--preset", "ulmfit", "--freeze_below", "2", "--cache_frozen"],
      "ok|refuse:cache"),
    C("output_dir_is_data_dir", "lost", "glue", ["--output_dir", "{work}/data", "--data_dir", "{work}/data",
                                                 "--overwrite_output_dir"], "ok", "data_copy",
      keep=("data/RTE/train.tsv", "data/RTE/dev.tsv")),
    C("output_dir_is_model_dir_save", "lost", "glue", ["--output_dir", "{work}/m", "--model_name_or_path", "{work}/m",
                                                       "--save_model"], "ok", "model_copy",
      keep=("m/config.json", "m/model.safetensors", "m/vocab.txt")),
    C("output_dir_is_model_dir_overwrite", "lost", "glue", ["--output_dir", "{work}/m", "--model_name_or_path",
                                                            "{work}/m", "--overwrite_output_dir"], "ok", "model_copy",
      keep=("m/config.json", "m/model.safetensors", "m/vocab.txt")),
    # -- ablate.py --------------------------------------------------------------------------------------------------
    C("ablate_out_is_a_file", "unexpected", "ablate", ["run", "--tasks", "rte", "--presets", "baseline", "--out",
                                                       "{work}/file.txt", "--", "--model_name_or_path", "{model}"],
      "refuse:file.txt", "data_file", base=False),
    C("ablate_seeds_reversed", "other", "ablate", ["run", "--tasks", "rte", "--presets", "baseline", "--seeds", "3-1",
                                                   "--out", "{work}/s"], "refuse:--seeds", base=False),
    C("ablate_empty_cell", "other", "ablate", ["run", "--tasks", "rte", "--cell", "=--top_k 1", "--out", "{work}/s"],
      "refuse:--cell", base=False),
    C("ablate_report_compare_missing_baseline", "other", "ablate", ["report", "{work}/study", "--compare_to",
                                                                    "top3x5"], "ok|refuse:top3x5",
      "damaged_results", base=False, keep=()),
    C("ablate_report_missing_folder", "misleading", "ablate", ["report", "{work}/none"], "refuse:none", base=False),
    C("ablate_cell_typo_option", "other", "ablate", ["run", "--tasks", "rte", "--cell", "a=--top_kk 1", "--out",
                                                     "{work}/s", "--", "--model_name_or_path", "{model}"],
      "refuse:--top_kk", base=False),
    C("ablate_grid_no_values", "other", "ablate", ["run", "--tasks", "rte", "--grid", "top_k=", "--out", "{work}/s"],
      "refuse:--grid", base=False),
    # -- python -m hf_layerwise -------------------------------------------------------------------------------------
    C("describe_num_labels_0", "other", "cli", ["describe", "{model}", "--num-labels", "0"], "refuse:--num-labels",
      base=False),
    C("describe_preset_unknown", "other", "cli", ["describe", "{model}", "--preset", "x"], "refuse:x", base=False),
    C("describe_cache_frozen", "silent", "cli", ["describe", "{model}", "--freeze_below", "2", "--top-k", "1",
                                                 "--cache_frozen"],
      "ok|refuse:--cache_frozen", base=False),
    C("describe_albert", "misleading", "cli", ["describe", "{fx}/albert"], "refuse:ALBERT", base=False),
    C("describe_lr_find_damaged", "other", "cli", ["describe", "{model}", "--lr-find", "{work}/file.txt"],
      "refuse:--lr-find", "data_file", base=False),
    C("report_no_health", "other", "cli", ["report", "{work}"], "refuse:health", base=False),
    C("report_damaged_health", "unexpected", "cli", ["report", "{work}/h"], "refuse:health.jsonl", "damaged_health",
      base=False),
    # -- more of each class, found while fixing the others ---------------------------------------------------------
    C("overwrite_plateau_trainer", "lost", "trainer", ["--overwrite_output_dir", "--lr_scheduler_type",
                                                         "reduce_lr_on_plateau"], "ok", "trainer_run",
      overwritten=True),
    C("greedy_scheduler", "unexpected", "glue", ["--lr_scheduler_type", "greedy"], "ok"),
    C("cosine_min_lr_with_kwargs", "unexpected", "trainer", ["--lr_scheduler_type", "cosine_with_min_lr",
                                                             "--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}'], "ok"),
    C("scheduler_kwargs_for_linear", "silent", "glue", ["--lr_scheduler_kwargs", '{"num_cycles": 2}'],
      "refuse:--lr_scheduler_kwargs"),
    C("lr_find_epochs", "silent", "lr_find", ["--num_train_epochs", "5"], "refuse:--num_train_epochs"),
    C("runs_notes_beside_trainer_run", "misleading", "trainer", [], "ok", "runs_notes", keep=("out/runs",)),
    C("ablate_forwarded_overwrite", "lost", "ablate", ["run", "--tasks", "rte", "--presets", "baseline", "--out",
                                                       "{work}/s", "--", "--model_name_or_path", "{model}",
                                                       "--overwrite_output_dir"], "refuse:--overwrite_output_dir",
      base=False),
    C("monitor_every_without_monitor_trainer", "silent", "trainer", ["--monitor_every", "5"], "refuse:--monitor_every"),
]

SETUPS.update({
    "no_label_csv": write("t.csv", "sentence1,sentence2\na b,c d\n"),
    "data_copy": copy("data", "data"),
    "model_copy": copy("model", "m"),
    "damaged_health": write("h/health.jsonl", '{"step": 1, "depth'),
})


# -- running and sorting ------------------------------------------------------------------------------------------
def _fill(args: list[str], fx: str, work: str) -> list[str]:
    values = {"model": os.path.join(fx, "model"), "data": os.path.join(fx, "data"), "fx": fx, "work": work,
              "out": os.path.join(work, "out")}
    out = []
    for a in args:  # only these placeholders: JSON values keep their braces
        for key, value in values.items():
            a = a.replace("{" + key + "}", value)
        out.append(a)
    return out


def argv_of(case: Case, fx: str, work: str) -> list[str]:
    if case.program == "api":  # Python source: no placeholders
        return case.args
    args = _fill(case.args, fx, work)
    if not case.base:
        return args
    base = _fill(BASE, fx, work)
    given = {a for a in args if a.startswith("--")}
    out, i = [], 0
    while i < len(base):
        if base[i] in given or base[i] in case.drop or (case.program == "lr_find" and base[i] in (
                "--checkpointing_steps", "--max_train_steps", "--learning_rate") and case.id != "lr_find_checkpointing"):
            i += 2
            continue
        out += base[i:i + 2]
        i += 2
    if case.program == "lr_find" and case.id != "lr_find_checkpointing":
        out += ["--lr_find_steps", "6"]
    return out + args


def snapshot(folder: str) -> dict[str, str | None]:
    state = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            state[os.path.relpath(os.path.join(dirpath, name), folder)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return state


def command(case: Case, argv: list[str], root: str) -> list[str]:
    if case.program == "api":
        return ["-c", f"import sys; sys.path.insert(0, {HERE!r})\n" + argv[0]]
    if case.program == "cli":
        return ["-m", "hf_layerwise", *argv]
    script = os.path.join(root, "recipes", SCRIPTS[case.program])
    if not case.pre:
        return [script, *argv]
    pre = case.pre
    return ["-c", f"import sys; sys.path.insert(0, {os.path.dirname(script)!r}); sys.argv = {[script, *argv]!r}\n"
                  f"import {SCRIPTS[case.program][:-3]} as program\n{pre}\n"
                  "from hf_layerwise.errors import run_cli\nraise SystemExit(run_cli(program.main))"]


def run_case(case: Case, fx: str, root: str, scratch: str) -> tuple[str, str]:
    work = os.path.join(scratch, case.id)
    os.makedirs(work)
    if case.setup:
        SETUPS[case.setup](work, fx)
    before = snapshot(work)
    argv = argv_of(case, fx, work)
    try:
        proc = _python(command(case, argv, root), root, cwd=work, timeout=900)
    except subprocess.TimeoutExpired:
        return "wrong", "timed out"
    after = snapshot(work)
    errors = [line[line.index("error: "):] for line in proc.stderr.splitlines() + proc.stdout.splitlines()
              if "error: " in line]  # also after a progress bar on the same line
    expect = case.expect
    wants = [e for e in expect.split("|")]
    detail = (errors[0] if errors else f"exit {proc.returncode}")[:230]
    # lost: a file that existed before was removed or changed (a successful --overwrite_output_dir may replace the
    # old run in out/, except the paths the case keeps); our lock file's stamp does not count
    protected = [p for p in before if os.path.basename(p) != ".hf_layerwise.lock"]
    if proc.returncode == 0 and case.overwritten:
        protected = [p for p in protected if not p.startswith("out") or any(p.startswith(k) for k in case.keep)]
    gone = [p for p in protected if after.get(p, "missing") != before[p]]
    gone += [f"{p} (never written)" for p in case.needs if p not in after]
    if os.path.exists(os.path.join(work, "LOST")):
        gone.append(open(os.path.join(work, "LOST")).read())
    if gone:
        return "lost", f"{', '.join(sorted(gone)[:4])} lost or changed; {detail}"
    if "Traceback" in proc.stderr:
        return "wrong", "traceback printed; " + detail
    if proc.returncode == 0:
        if "ok" in wants:
            return "good", detail
        warned = [w[5:] for w in wants if w.startswith("warn:")]
        text = proc.stderr + proc.stdout
        if warned and any(w in text for w in warned):
            return "good", "warned"
        return "silent", f"exit 0; expected {expect}"
    if len(errors) != 1:
        return "wrong", f"{len(errors)} error lines, exit {proc.returncode}; {proc.stderr[-300:]!r}"
    if "(unexpected;" in errors[0]:
        return "unexpected", detail
    refusals = [w[7:] for w in wants if w.startswith("refuse:")] + [w[5:] for w in wants if w.startswith("warn:")]
    if any(r.lower() in errors[0].lower() for r in refusals) and proc.returncode in (1, 2):
        return "good", detail
    return "wrong", f"expected {expect}; got {detail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.dirname(HERE), help="the checkout to probe")
    parser.add_argument("--only", default="", help="run the cases whose id contains this")
    parser.add_argument("--ids", default="", help="run these cases (comma-separated ids)")
    parser.add_argument("--fixtures", default=None, help="keep the fixtures here (made once)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the outcomes here")
    a = parser.parse_args()
    root = os.path.abspath(a.root)
    fx = a.fixtures or tempfile.mkdtemp(prefix="probe-fx-")
    fixtures(fx, root)
    scratch = tempfile.mkdtemp(prefix="probe-")
    ids = {i.strip() for i in a.ids.split(",") if i.strip()}
    unknown = ids - {c.id for c in CASES}
    if unknown:
        parser.error(f"--ids: no such case(s): {', '.join(sorted(unknown))}")
    cases = [c for c in CASES if a.only in c.id and (not ids or c.id in ids)]
    outcomes = {}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = {pool.submit(run_case, c, fx, root, scratch): c for c in cases}
        for future in concurrent.futures.as_completed(futures):
            case = futures[future]
            try:
                outcome, detail = future.result()
            except Exception as err:  # the probe's own fault in this case: say so, go on with the others
                outcome, detail = "wrong", f"the probe failed on this case: {type(err).__name__}: {err}"
            outcomes[case.id] = {"class": case.cls, "outcome": outcome, "detail": detail}
            print(f"{outcome:<10} {case.cls:<10} {case.id:<40} {detail}", flush=True)
    counts: dict[str, dict[str, int]] = {}
    for o in outcomes.values():
        counts.setdefault(o["class"], {}).setdefault(o["outcome"], 0)
        counts[o["class"]][o["outcome"]] += 1
    print(f"\n{len(outcomes)} cases")
    for cls, by in sorted(counts.items()):
        print(f"  {cls:<10} " + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(outcomes, f, indent=1, sort_keys=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
