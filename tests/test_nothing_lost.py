"""Nothing is lost: every scenario that once deleted or replaced a finished run or the user's own files, as a table.

Each row sets up a folder (a finished run with checkpoints, the user's data and model folders inside the output
folder, a second folder holding another run...), snapshots every byte of it, runs a program (in this process, through
``run_cli`` as on the command line), and checks the exit code, the ``error:`` line and, byte for byte, what must still
be there afterwards: the whole folder when the command is refused or fails before it has anything to show, the user's
folders when an overwrite succeeds, results.json when only the optional ``--save_model`` fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass, field
from typing import Callable

import pytest
from glue_fixtures import make_model_dir, write_glue_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))
import ablate  # noqa: E402
import glue as glue_recipe  # noqa: E402
import glue_trainer  # noqa: E402

from hf_layerwise.errors import run_cli  # noqa: E402
from hf_layerwise.glue.run_dir import MANIFEST, REPLACED  # noqa: E402

PROGRAMS = {"glue": glue_recipe, "trainer": glue_trainer}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A tiny model (dropout on), RTE data, and a finished run of each recipe with two checkpoints."""
    root = tmp_path_factory.mktemp("lost")
    make_model_dir(str(root / "model"), dropout=0.1)
    write_glue_task(str(root / "data"), "rte", n_train=32, n_dev=8)
    for program, name in (("glue", "glue_run"), ("trainer", "trainer_run")):
        assert run_cli(PROGRAMS[program].main, [*_base(root), "--output_dir", str(root / name)]) == 0
    return root


def _base(root, data=None, model=None):
    return ["--model_name_or_path", str(model or os.path.join(root, "model")), "--data_dir",
            str(data or os.path.join(root, "data")),
            "--task_name", "rte", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
            "--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "3"]


def snapshot(folder) -> dict[str, object]:
    """Every entry below ``folder``: a file's sha256 and permission bits, a folder's permission bits."""
    state: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    state[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(), mode)
            else:
                state[os.path.relpath(path, folder) + "/"] = mode
    return state


@dataclass
class Lost:
    id: str
    program: str  # glue, trainer, ablate
    setup: Callable[[str, str], None]  # (work, fx): the folders before the command
    argv: Callable[[str, str], list[str]]  # (work, fx) -> the command's arguments
    code: int
    message: str  # in the one error: line ("" when the command succeeds)
    kept: list[str] = field(default_factory=lambda: ["."])  # folders below work that must be unchanged, byte for byte
    check: Callable[[str], None] | None = None  # more checks on work afterwards
    patch: Callable[[pytest.MonkeyPatch, str, str], None] | None = None  # a fault injected into the run


def _copy(src, dest="out"):
    def setup(work, fx):
        shutil.copytree(os.path.join(fx, src), os.path.join(work, dest))
    return setup


def _chain(*setups):
    def setup(work, fx):
        for s in setups:
            s(work, fx)
    return setup


def _run_args(program, *extra, out="out", data=None, model=None):
    def argv(work, fx):
        return [*_base(fx, data and os.path.join(work, data), model and os.path.join(work, model)),
                "--output_dir", os.path.join(work, out), *[a.format(work=work, fx=fx) for a in extra]]
    return argv


DIVERGE = ["--learning_rate", "1e30", "--max_grad_norm", "0", "--checkpointing_steps", "100"]


def _diverge(program):
    """The loss becomes non-finite at the first step: the run fails before it writes anything to show."""
    return _run_args(program, "--overwrite_output_dir", *DIVERGE)


def _fail_first_step(monkeypatch, work, fx):
    """A fault (the disk, a bug) at the first optimizer step of the new run."""
    import torch

    def boom(self, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch.optim.AdamW, "step", boom)


def _race(program):
    """Another run takes the folder while this one is loading its model (after its check, before its claim)."""
    def patch(monkeypatch, work, fx):
        module = PROGRAMS[program]
        original = module.load_model
        state = {"done": False}

        def load_model(*a, **k):
            if not state["done"]:
                state["done"] = True
                assert run_cli(module.main, [*_base(fx), "--seed", "5", "--output_dir",
                                             os.path.join(work, "out")]) == 0
                snapshots["after_other"] = snapshot(os.path.join(work, "out"))
            return original(*a, **k)
        monkeypatch.setattr(module, "load_model", load_model)
    return patch


snapshots: dict[str, object] = {}


def _results_kept(work):
    results = json.loads(open(os.path.join(work, "out", "results.json")).read())
    assert results["completed_steps"] == 4 and results["metrics"]


def _restored(work):
    assert not os.path.exists(os.path.join(work, "out", REPLACED))


def _overwritten(work):
    results = json.loads(open(os.path.join(work, "out", "results.json")).read())
    assert results["completed_steps"] == 4 and results["seed"] == 3
    assert not os.path.exists(os.path.join(work, "out", REPLACED))


def _user_folders(*names):
    def setup(work, fx):
        for name, src in zip(names, ("data", "model")):
            shutil.copytree(os.path.join(fx, src), os.path.join(work, "out", name))
    return setup


def _notes(work, fx):
    os.makedirs(os.path.join(work, "out", "runs"))
    with open(os.path.join(work, "out", "runs", "notes.txt"), "w") as f:
        f.write("mine")


def _fail_save(monkeypatch, work, fx, program):
    """The folder turns read-only (or the disk fills) when --save_model writes at the very end."""
    from transformers import PreTrainedModel, Trainer

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", os.path.join(work, "out", "model"))
    if program == "glue":
        monkeypatch.setattr(PreTrainedModel, "save_pretrained", denied)
        return
    save_model = Trainer.save_model

    def trainer_save_model(self, output_dir=None, _internal_call=False):  # the Trainer's checkpoints save with it too
        if not _internal_call:
            denied(self)
        return save_model(self, output_dir, _internal_call)
    monkeypatch.setattr(Trainer, "save_model", trainer_save_model)


def _ablate(cell, *more):
    def argv(work, fx):
        return ["run", "--tasks", "rte", "--cell", cell, "--seeds", "1-2", "--out", os.path.join(work, "sweep"), *more,
                "--", "--model_name_or_path", os.path.join(fx, "model"), "--data_dir", os.path.join(fx, "data")]
    return argv


LOST = [
    # 1. --overwrite_output_dir, then the new run fails at its first step: the old run is back, byte for byte
    *[Lost(f"{p}_overwrite_then_nonfinite_loss", p, _copy(f"{p}_run"), _diverge(p), 1, "is not finite",
           check=_restored) for p in PROGRAMS],
    *[Lost(f"{p}_overwrite_then_fault_at_step_1", p, _copy(f"{p}_run"), _run_args(p, "--overwrite_output_dir"), 1,
           "No space left on device", check=_restored, patch=_fail_first_step) for p in PROGRAMS],
    # a vocabulary larger than the model's embeddings was an index error at step 1: now refused before the claim
    *[Lost(f"{p}_overwrite_with_too_large_tokenizer", p, _copy(f"{p}_run"),
           _run_args(p, "--overwrite_output_dir", "--tokenizer_name", "{fx}/bigtok"), 2, "embeddings")
      for p in PROGRAMS],
    *[Lost(f"{p}_overwrite_with_plateau_scheduler", p, _copy(f"{p}_run"),
           _run_args(p, "--overwrite_output_dir", "--lr_scheduler_type", "reduce_lr_on_plateau"), 0, "",
           kept=[], check=_overwritten) for p in PROGRAMS],
    # 2. the user's folders inside the output folder: kept by an overwrite, refused when the run would write there
    *[Lost(f"{p}_overwrite_keeps_user_data_and_model", p, _chain(_copy(f"{p}_run"), _user_folders("glue", "model")),
           _run_args(p, "--overwrite_output_dir", data="out/glue", model="out/model"), 0, "",
           kept=["out/glue", "out/model"], check=_overwritten) for p in PROGRAMS],
    *[Lost(f"{p}_save_model_over_user_model", p, _chain(_copy(f"{p}_run"), _user_folders("glue", "model")),
           _run_args(p, "--overwrite_output_dir", "--save_model", data="out/glue", model="out/model"), 2,
           "holds model (--save_model writes the fine-tuned model there), which hf-layerwise did not write there")
      for p in PROGRAMS],
    Lost("report_to_over_user_folder", "glue", _user_folders("glue"),
         _run_args("glue", "--report_to", "tensorboard", data="out/glue"), 2, "holds glue (--report_to tensorboard"),
    Lost("user_notes_beside_a_new_run", "trainer", _notes, _run_args("trainer"), 0, "", kept=["out/runs"],
         check=_results_kept),
    Lost("user_notes_in_runs_folder", "trainer", _notes, _run_args("trainer", "--report_to", "tensorboard"), 2,
         "holds runs (--report_to tensorboard logs there)"),
    # 3. two runs into one folder: the other finishes between this run's check and its claim
    *[Lost(f"{p}_race_of_two_runs", p, lambda w, f: None, _run_args(p), 2,
           "changed while this run was starting", kept=[], patch=_race(p),
           check=lambda w: snapshot(os.path.join(w, "out")) == snapshots["after_other"] or pytest.fail(
               "the folder is not the other run's, byte for byte")) for p in PROGRAMS],
    # 4. resuming another folder's checkpoint into a folder that holds a different finished run
    *[Lost(f"{p}_resume_other_folder_into_finished_run", p, _chain(_copy(f"{p}_run"), _copy(f"{p}_run", "other")),
           _run_args(p, "--resume_from_checkpoint", "{work}/other/" + ("step_2" if p == "glue" else "checkpoint-2")),
           2, "continues the run of another folder, but --output_dir") for p in PROGRAMS],
    # 5. sweep cells carrying flags the sweep owns
    Lost("ablate_cell_output_dir", "ablate", _copy("glue_run", "mine"),
         _ablate("mine=--preset top3x5 --output_dir {work}/mine"), 2, "--output_dir is set by the sweep"),
    Lost("ablate_cell_seed", "ablate", lambda w, f: None, _ablate("mine=--preset top3x5 --seed 7"), 2,
         "--seed is set by the sweep"),
    Lost("ablate_forwarded_overwrite", "ablate", lambda w, f: None,
         lambda w, f: [*_ablate("mine=--preset top3x5")(w, f), "--overwrite_output_dir"], 2,
         "--overwrite_output_dir is set by the sweep"),
    # 6. the optional --save_model fails at the end: results.json is written first and stays
    *[Lost(f"{p}_save_model_fails", p, lambda w, f: None, _run_args(p, "--save_model"), 1,
           "--save_model: could not save the model", kept=[], check=_results_kept,
           patch=lambda m, w, f, p=p: _fail_save(m, w, f, p))
      for p in PROGRAMS],
]


@pytest.fixture(scope="module")
def bigtok(fx):
    """A tokenizer whose vocabulary (200 ids) is larger than the tiny model's 96 embeddings."""
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(195)]]
    (fx / "bigtok").mkdir()
    (fx / "bigtok" / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(vocab=str(fx / "bigtok" / "vocab.txt")).save_pretrained(fx / "bigtok")


@pytest.mark.parametrize("case", LOST, ids=[c.id for c in LOST])
def test_nothing_lost(case, fx, bigtok, tmp_path, capsys, monkeypatch):
    work = str(tmp_path / "work")
    os.makedirs(work)
    case.setup(work, str(fx))
    before = {k: snapshot(os.path.join(work, k)) for k in case.kept}
    if case.patch:
        case.patch(monkeypatch, work, str(fx))
    capsys.readouterr()
    program = ablate.main if case.program == "ablate" else PROGRAMS[case.program].main
    code = run_cli(program, case.argv(work, str(fx)))
    err = capsys.readouterr().err
    errors = [line[line.index("error: "):] for line in err.splitlines() if "error: " in line]  # also after a bar
    assert code == case.code, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    if case.message:
        assert len(errors) == 1 and case.message in errors[0], err[-3000:]
    else:
        assert not errors, errors
    for k in case.kept:
        assert snapshot(os.path.join(work, k)) == before[k], f"{k} changed"
    if case.check:
        case.check(work)


def test_the_table_covers_every_lost_scenario_of_issue_25():
    ids = {c.id for c in LOST}
    for needed in ("glue_overwrite_then_nonfinite_loss", "trainer_overwrite_then_fault_at_step_1",
                   "glue_overwrite_keeps_user_data_and_model", "glue_race_of_two_runs", "trainer_race_of_two_runs",
                   "glue_resume_other_folder_into_finished_run", "ablate_cell_output_dir", "ablate_cell_seed",
                   "glue_save_model_fails", "trainer_save_model_fails"):
        assert needed in ids


def test_a_run_killed_while_it_replaced_another_keeps_the_old_one(fx, tmp_path, capsys):
    """kill -9 during an overwrite (before the new run's results): the old run waits in .hf_layerwise-replaced; the
    next --overwrite_output_dir run deletes only the unfinished one, and the old one goes only when that run has its
    results."""
    out = tmp_path / "out"
    shutil.copytree(fx / "glue_run", out)
    old = snapshot(out)
    (out / REPLACED).mkdir()  # what the killed run left: the old run set aside, its own manifest and a checkpoint
    for name in os.listdir(out):
        if name not in (REPLACED, ".hf_layerwise.lock"):
            os.replace(out / name, out / REPLACED / name)
    shutil.copytree(fx / "glue_run" / "step_2", out / "step_2")
    (out / MANIFEST).write_text(json.dumps({"run_id": "killed", "program": "glue.py", "names": ["results.json"],
                                            "prefixes": ["step_"], "started": "-"}))
    argv = [*_base(fx), "--output_dir", str(out)]
    assert run_cli(glue_recipe.main, argv) == 2  # the folder holds a run: refused without a word about which
    assert "already holds a run (step_2, .hf_layerwise-replaced" in capsys.readouterr().err
    set_aside = snapshot(out / REPLACED)
    assert run_cli(glue_recipe.main, [*argv, "--overwrite_output_dir", *DIVERGE]) == 1
    assert snapshot(out / REPLACED) == set_aside  # the failed run did not touch the old one
    assert run_cli(glue_recipe.main, [*argv, "--overwrite_output_dir"]) == 0
    assert not (out / REPLACED).exists() and json.loads((out / "results.json").read_text())["completed_steps"] == 4
    assert set(snapshot(out)) == set(old)


def test_files_follow_the_umask(tmp_path):
    """results.json, lr_find.json, progress.json were written with mode 0600 (mkstemp); now like any other file."""
    from hf_layerwise.glue.run_dir import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(str(tmp_path / "a.json"), {"x": 1})
        os.umask(0o077)
        write_json_atomic(str(tmp_path / "b.json"), {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o600
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json"]  # no temporary file left


def test_no_process_renames_a_checkpoint_another_still_writes(tmp_path, monkeypatch):
    """``save_checkpoint``: every process writes its RNG state into ``.tmp-step_N`` (``accelerator.save_state``); the
    main process renames that folder to ``step_N`` only after a barrier that follows the save. Without it a second
    process found its folder gone (CI, 2026-12-07: "Parent directory .../.tmp-step_6 does not exist")."""
    import torch
    from types import SimpleNamespace

    calls = []

    class Accelerator:
        is_main_process = True

        def gather(self, tensor):
            return tensor

        def wait_for_everyone(self):
            calls.append("barrier")

        def save_state(self, folder):
            os.makedirs(folder, exist_ok=True)
            calls.append("save_state")

    class Progress:
        completed_steps, checkpoint_time_s, train_time_s, loss_sums = 6, 0.0, 0.0, None

        def save(self, folder):
            calls.append("progress")

    real_replace = os.replace
    monkeypatch.setattr(glue_recipe.os, "replace", lambda a, b: (calls.append("rename"), real_replace(a, b)))
    run = SimpleNamespace(accelerator=Accelerator(), progress=Progress(), model=torch.nn.Linear(2, 2),
                          running_loss=torch.tensor(0.5), elapsed=lambda: 1.0, settings={"seed": 1},
                          args=SimpleNamespace(train=SimpleNamespace(output_dir=str(tmp_path))))
    glue_recipe.save_checkpoint(run)
    assert (tmp_path / "step_6").is_dir() and not (tmp_path / ".tmp-step_6").exists()
    saved, renamed = calls.index("save_state"), calls.index("rename")
    assert "barrier" in calls[saved + 1:renamed], calls
