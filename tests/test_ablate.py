"""recipes/ablate.py: resumable sweep, failure recording, lock, and the statistics of the report."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from glue_fixtures import Started, make_model_dir, write_glue_task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))
import ablate  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate")
    model = make_model_dir(str(root / "model"), dropout=0.0)
    write_glue_task(str(root / "data"), "rte", n_train=32, n_dev=16)
    return root, model


def _cmd(setup, out, *extra):
    root, model = setup
    return [sys.executable, os.path.join(ROOT, "recipes", "ablate.py"), "run", "--tasks", "rte", "--presets",
            "baseline", "--cell", "lr5x=--preset baseline --learning_rate 5e-3", "--seeds", "1-2", "--out", str(out),
            *extra, "--", "--model_name_or_path", model, "--data_dir", str(root / "data"), "--num_train_epochs", "1",
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-3"]


def _summary(out):
    ablate.report(str(out))
    with open(out / "summary.csv") as f:
        rows = [line.split(",")[:5] for line in f.read().splitlines()]
    return rows, _without_times((out / "summary.md").read_text())


def _without_times(markdown):
    """Drop the two timing columns (`train time`, `time vs baseline`) that end every table row: wall-clock times
    differ between two sweeps of the same cells, the scores and statistics must not."""
    return "\n".join("|".join(line.split("|")[:-3]) if line.startswith("|") else line
                     for line in markdown.splitlines())


def _two_cells(setup, out, *extra):
    cmd = _cmd(setup, out, *extra)  # baseline and lr5x
    cmd[cmd.index("--seeds") + 1] = "1"
    return cmd


def _span(status_file):
    status = json.loads(status_file.read_text())
    start = time.mktime(time.strptime(status["started"], "%Y-%m-%d %H:%M:%S"))
    return start, start + status["seconds"]


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_cells(setup, tmp_path):
    """Also: the uninterrupted twin runs its two cells side by side (--jobs 2) and ends where the serial, killed and
    resumed sweep ends."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = Started(_two_cells(setup, straight, "--jobs", "2"), env=ENV)  # meanwhile: kill and resume its twin
    proc = subprocess.Popen(_two_cells(setup, killed), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600  # a bound for a hung sweep, not a speed requirement (CI hosts differ a lot)
    while time.time() < deadline and proc.poll() is None:  # kill once the first cell has finished
        if list(killed.glob("rte/*/seed*/results.json")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep, as a crash would; its run notices and stops
    proc.wait()
    assert all(_lock_free(lock) for lock in killed.glob("rte/*/seed*/.hf_layerwise.lock"))
    finished = {p: p.stat().st_mtime_ns for p in killed.glob("rte/*/seed*/results.json")}
    assert len(finished) == 1, "the sweep ended before it could be killed"
    out = subprocess.run(_two_cells(setup, killed), env=ENV, check=True, capture_output=True, text=True).stdout
    assert "1 already complete, 1 to run" in out
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime  # not re-run
    reference.wait()
    assert _summary(straight) == _summary(killed)
    (a0, a1), (b0, b1) = (_span(p) for p in sorted(straight.glob("rte/*/seed1/status.json")))
    assert a0 < b1 and b0 < a1, "--jobs 2 ran the cells one after the other"


def test_jobs_bad_values_end_in_one_line(setup, tmp_path):
    with pytest.raises(ablate.UsageError, match=r"^--jobs 0: must be 1 or more"):
        ablate.main(_cmd(setup, tmp_path, "--jobs", "0")[2:])
    with pytest.raises(ablate.UsageError, match=r"^--jobs 2 with --launcher: .* own --main_process_port"):
        ablate.main(_cmd(setup, tmp_path, "--jobs", "2", "--launcher", "accelerate launch")[2:])
    assert not tmp_path.joinpath("rte").exists()  # refused before anything was written


def test_jobs_share_the_cores_unless_the_user_set_threads(monkeypatch):
    monkeypatch.setattr(ablate, "usable_cpus", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert ablate.cell_env(4)["OMP_NUM_THREADS"] == "4"
    assert ablate.cell_env(32)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in ablate.cell_env(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert ablate.cell_env(4)["OMP_NUM_THREADS"] == "3"
    assert ablate.cell_env(4)[ablate.SWEEP_PID_ENV] == str(os.getpid())


def test_failing_cell_is_recorded_and_the_sweep_goes_on(setup, tmp_path):
    cmd = _cmd(setup, tmp_path) + ["--top_k", "99"]  # impossible for a 4-block model: every cell fails
    cmd[cmd.index("--seeds") + 1] = "1"
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stdout.count("FAILED") == 2 and "sweep done: 0 ran, 2 failed" in proc.stdout
    status = json.loads((tmp_path / "rte" / "lr5x" / "seed1" / "status.json").read_text())
    assert status["status"] == "failed" and "top_k=99 is larger than the model's 4 encoder blocks" in status["error"]


def test_second_sweep_on_the_same_folder_refuses(setup, tmp_path):
    with ablate.SweepLock(str(tmp_path), ["rte"]):
        proc = subprocess.run(_cmd(setup, tmp_path), env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0 and f"another sweep is running task rte on {tmp_path} (pid {os.getpid()}" in proc.stderr
    assert [p.name for p in tmp_path.glob("rte/*")] == [".ablate.lock"]


def test_sweeps_of_other_tasks_share_the_folder(tmp_path):
    out = str(tmp_path)
    with ablate.SweepLock(out, ["rte", "mrpc"]):
        with ablate.SweepLock(out, ["cola", "stsb"]):  # other tasks: allowed beside it
            with pytest.raises(ablate.UsageError, match="another sweep is running task rte on"):
                ablate.SweepLock(out, ["rte", "qnli"]).__enter__()  # takes qnli, then finds rte held
            with ablate.SweepLock(out, ["qnli"]):  # the refused sweep gave back what it had taken
                pass
            with pytest.raises(ablate.UsageError, match="task cola"):
                ablate.SweepLock(out, ["cola"]).__enter__()
        with ablate.SweepLock(out, ["cola"]):  # released when the second sweep ended
            pass


def test_cells_seeds_and_grid():
    assert ablate.parse_seeds("1-3,7") == [1, 2, 3, 7]
    cells = ablate.build_cells(["baseline"], ['u5=--preset baseline --learning_rate 1e-4'],
                               ["top_lr_multiplier=1,5", "freeze_below=0,3"])
    assert [c.name for c in cells] == ["baseline", "u5", "top_lr_multiplier=1,freeze_below=0",
                                       "top_lr_multiplier=1,freeze_below=3", "top_lr_multiplier=5,freeze_below=0",
                                       "top_lr_multiplier=5,freeze_below=3"]
    assert cells[1].options == ("--preset", "baseline", "--learning_rate", "1e-4")
    assert cells[-1].options == ("--top_lr_multiplier", "5", "--freeze_below", "3")
    with pytest.raises(ValueError, match="distinct names"):
        ablate.build_cells(["baseline", "baseline"], [], [])


HOST = {"boot_id": "boot-1", "cpu_count": 2, "torch_threads": 2, "cpu_share": 0.97}  # one quiet machine


ONE_LR = {"freeze_below": 0, "freeze_embeddings": False, "top_k": 0, "layer_decay": None, "head_lr_multiplier": 1.0,
          "unfreeze_every": 0}  # results.json "layerwise" of a run that trains everything at one LR


def _fake_run(out, task, cell, seed, value, majority, metric="accuracy", seconds=60.0, lr_find=None, host=HOST,
              lr=None, layerwise=None):
    folder = out / task / cell / f"seed{seed}"
    folder.mkdir(parents=True)
    extra = {} if lr is None else {"config": {"train": {"learning_rate": lr}}, "layerwise": layerwise or ONE_LR}
    (folder / "results.json").write_text(json.dumps({
        "task": task, "seed": seed, "main_metric": metric, "metrics": {metric: value},
        "majority_baseline": {metric: majority}, "train_time_s": seconds, "lr_find": lr_find, "host": host, **extra}))


def test_statistics_against_hand_computed_values(tmp_path):
    base = [0.60, 0.62, 0.58, 0.50, 0.64]
    top = [0.63, 0.66, 0.59, 0.53, 0.50]
    for seed, (b, t) in enumerate(zip(base, top), 1):
        _fake_run(tmp_path, "rte", "baseline", seed, b, 0.53)
        _fake_run(tmp_path, "rte", "top3x5", seed, t, 0.53, seconds=30.0)
        _fake_run(tmp_path, "cola", "baseline", seed, 0.3, 0.0, metric="matthews_correlation")
        _fake_run(tmp_path, "cola", "top3x5", seed, 0.35, 0.0, metric="matthews_correlation")
    for cell, value in (("baseline", 0.3), ("top3x5", 0.35)):  # seed 6 has CoLA only: not in the per-seed average
        _fake_run(tmp_path, "cola", cell, 6, value, 0.0, metric="matthews_correlation")
    summary = {(s["task"], s["cell"]): s for s in ablate.report(str(tmp_path))}
    s = summary[("rte", "top3x5")]
    assert s["n"] == 5 and s["mean"] == pytest.approx(0.582) and s["median"] == pytest.approx(0.59)
    assert s["std"] == pytest.approx(0.0668581, rel=1e-5) and s["max"] == pytest.approx(0.66)
    assert s["failed"] == 2  # 0.53 (not better than majority 0.53) and 0.50
    assert summary[("rte", "baseline")]["failed"] == 1
    # paired differences 0.03, 0.04, 0.01, 0.03, -0.14: mean -0.006, sd 0.0756968, t(0.975, 4) = 2.7764451
    d = s["diff"]
    half = 2.7764451 * 0.0756968 / math.sqrt(5)
    assert (d["mean"], d["low"], d["high"], d["n"]) == pytest.approx((-0.006, -0.006 - half, -0.006 + half, 5),
                                                                     rel=1e-5)
    assert ablate.glue_average(list(summary.values())) == pytest.approx(
        {"baseline": (0.588 + 0.3) / 2, "top3x5": (0.582 + 0.35) / 2})
    md = (tmp_path / "summary.md").read_text()
    assert "| top3x5 | 5 | 58.20 ± 6.69 | 59.00 | 66.00 | 2 | -0.60 [-10.00, +8.80] (n=5) | 0m30s | 0.50 |" in md
    assert "| baseline | 30.00 | 58.80 | 44.40 | 5 | — | 2m00s | 1.00 |" in md
    # per-seed averages differ by (rte diff + 0.05) / 2 = 0.04, 0.045, 0.03, 0.04, -0.045: mean 0.022,
    # sd 0.0378484, half-width 2.7764451 * 0.0378484 / sqrt(5) = 0.0469950
    # all tasks: RTE at 0.5 and CoLA at 1.0 of the baseline's time, both 60 s for the baseline: 0.75
    assert "| top3x5 | 35.00 | 58.20 | 46.60 | 5 | +2.20 [-2.50, +6.90] (n=5) | 1m30s | 0.75 |" in md
    averages = ablate.seed_averages(ablate.collect(str(tmp_path)))
    assert sorted(averages["top3x5"]) == [1, 2, 3, 4, 5] and averages["top3x5"][5] == pytest.approx(0.425)
    assert (tmp_path / "summary.png").stat().st_size > 10_000


def test_paired_differences_to_a_control_cell(tmp_path):
    # a uniform-LR control beside the layer-wise cell: is the layer-wise gain more than the control's?
    base, top, control = [0.60, 0.62, 0.58], [0.63, 0.66, 0.59], [0.64, 0.63, 0.61]
    for seed, (b, t, c) in enumerate(zip(base, top, control), 1):
        _fake_run(tmp_path, "rte", "baseline", seed, b, 0.5)
        _fake_run(tmp_path, "rte", "top3x5", seed, t, 0.5)
        _fake_run(tmp_path, "rte", "uniform-5x", seed, c, 0.5)
    summary = {s["cell"]: s for s in ablate.report(str(tmp_path), compare_to=("uniform-5x",))}
    # top3x5 - uniform-5x: -0.01, +0.03, -0.02: mean 0, sd 0.0264575, t(0.975, 2) = 4.3026527
    half = 4.3026527 * 0.0264575 / math.sqrt(3)
    d = summary["top3x5"]["vs"]["uniform-5x"]
    assert (d["mean"], d["low"], d["high"], d["n"]) == pytest.approx((0.0, -half, half, 3), abs=1e-6)
    assert summary["uniform-5x"]["vs"]["uniform-5x"] is None
    md = (tmp_path / "summary.md").read_text()
    assert "| diff to baseline [95% CI] | diff to uniform-5x [95% CI] | train time |" in md
    # top3x5 - baseline: 0.03, 0.04, 0.01: mean 0.026667, sd 0.0152753, half-width 0.0379462
    assert f"| +2.67 [-1.13, +6.46] (n=3) | +0.00 [-{100 * half:.2f}, +{100 * half:.2f}] (n=3) | 1m00s | 1.00 |" in md
    # the average table (one task here) has the control column too, and the control's own cell there is empty
    assert "| uniform-5x | 62.67 | 62.67 | 3 | +2.67 [-1.13, +6.46] (n=3) | — | 1m00s | 1.00 |" in md
    with pytest.raises(ablate.UsageError, match="no such cell.*baseline, top3x5, uniform-5x"):
        ablate.report(str(tmp_path), compare_to=("uniform-1x",))


def test_another_cell_can_be_the_baseline(tmp_path):
    # a LoRA study has no `baseline` cell: its reference is plain LoRA (`--baseline lora`)
    for seed, (lora, top, seconds) in enumerate(((0.60, 0.63, 30.0), (0.62, 0.66, 45.0), (0.58, 0.59, 60.0)), 1):
        _fake_run(tmp_path, "mrpc", "lora", seed, lora, 0.5)
        _fake_run(tmp_path, "mrpc", "lora-top3x5", seed, top, 0.5, seconds=seconds)
    summary = {s["cell"]: s for s in ablate.report(str(tmp_path), baseline="lora")}
    assert summary["lora"]["diff"] is None and summary["lora"]["time_ratio"] == 1.0
    d = summary["lora-top3x5"]["diff"]  # 0.03, 0.04, 0.01 as in the control test above
    assert (d["mean"], d["n"]) == pytest.approx((0.026667, 3), rel=1e-4)
    assert summary["lora-top3x5"]["time_ratio"] == pytest.approx(0.75)  # median of 0.5, 0.75, 1.0
    md = (tmp_path / "summary.md").read_text()
    assert "| diff to lora [95% CI] | train time | time vs lora |" in md
    assert "The baseline of this folder is the cell `lora`." in md
    assert "| lora-top3x5 | 3 | 62.67 ± 3.51 | 63.00 | 66.00 | 0 | +2.67 [-1.13, +6.46] (n=3) | 0m45s | 0.75 |" in md
    assert "| lora | 60.00 | 60.00 | 3 | — | 1m00s | 1.00 |" in md  # the average table, baseline row first
    with pytest.raises(ablate.UsageError, match="--baseline lora-x: no such cell.*lora, lora-top3x5"):
        ablate.report(str(tmp_path), baseline="lora-x")
    with pytest.raises(ablate.UsageError, match="--compare_to lora is the --baseline cell already"):
        ablate.report(str(tmp_path), compare_to=("lora",), baseline="lora")


def test_lr_range_tests_table(tmp_path):
    def found(lr, time_s, top=None, fallback=False):
        tests = [{"kind": "lr"}] + ([{"kind": "multiplier"}] if top is not None else [])
        return {"learning_rate": lr, "top_lr_multiplier": 1.0 if top is None else top, "fallback": fallback,
                "time_s": time_s, "tests": tests}

    for seed, (low, high, shaped) in {1: (0.60, 0.64, 0.70), 2: (0.62, 0.66, 0.70), 3: (0.61, 0.65, 0.70)}.items():
        _fake_run(tmp_path, "rte", "baseline", seed, low, 0.5, seconds=100.0, lr=2e-5)
        _fake_run(tmp_path, "rte", "fast", seed, high, 0.5, seconds=100.0, lr=1e-4)  # the grid's best
        _fake_run(tmp_path, "rte", "top3", seed, shaped, 0.5, seconds=100.0, lr=2e-5,  # better, but not one LR
                  layerwise={**ONE_LR, "top_k": 3})
    _fake_run(tmp_path, "rte", "fast", 4, 0.99, 0.5, lr=1e-4)  # one seed more: mean 0.735, still the best
    _fake_run(tmp_path, "rte", "auto", 1, 0.60, 0.5, seconds=100.0, lr_find=found(1e-4, 10.0), lr="auto")
    _fake_run(tmp_path, "rte", "auto", 2, 0.62, 0.5, seconds=200.0, lr_find=found(4e-4, 30.0), lr="auto")
    _fake_run(tmp_path, "rte", "auto", 3, 0.64, 0.5, seconds=100.0, lr_find=found(2e-5, 12.0, fallback=True),
              lr="auto")
    _fake_run(tmp_path, "rte", "auto-top", 1, 0.6, 0.5, seconds=100.0, lr_find=found(1e-4, 20.0, top=8.0))
    ablate.report(str(tmp_path))
    md = (tmp_path / "summary.md").read_text()
    # learning rates of the runs that did not fall back: 1e-4, 4e-4 (median 2.5e-4); time ratios 0.1, 0.15, 0.12;
    # against fast (seeds 1-3): -0.04, -0.04, -0.01: mean -3.00, sd 1.7321, half-width 4.3027 * 1.7321 / sqrt 3
    assert ("| rte | auto | 3 | 0.00025 (0.0001-0.0004) | — | 1 | 12 s | 0.120 | fast (0.0001): 73.50 "
            "| -3.00 [-7.30, +1.30] (n=3) |") in md
    assert "| rte | auto-top | 1 | 0.0001 | 8 | 0 | 20 s | 0.200 | fast (0.0001): 73.50 | -4.00 (n=1) |" in md
    assert "| rte | baseline |" not in md  # runs with a given LR have no row
    rows = ablate.collect(str(tmp_path))
    assert {r["cell"]: r["fixed_lr"] for r in rows if r["seed"] == 1} == {
        "baseline": 2e-5, "fast": 1e-4, "top3": None, "auto": None, "auto-top": None}
    with open(tmp_path / "summary.csv") as f:
        header = f.readline().strip().split(",")
    assert {"lr_find_lr", "lr_find_top", "lr_find_fallback", "lr_find_time_s"} <= set(header)


def test_grid_best_ranks_cells_on_the_seeds_they_share(tmp_path):
    # fast's extra seed 4 (0.99) lifts its own mean to 0.735, above mid's 0.69; on seeds 1-2, which every cell of
    # the grid has, mid (0.69) beats fast (0.65) and baseline (0.61)
    for seed, (low, mid, high) in {1: (0.60, 0.70, 0.64), 2: (0.62, 0.68, 0.66)}.items():
        _fake_run(tmp_path, "rte", "baseline", seed, low, 0.5, lr=2e-5)
        _fake_run(tmp_path, "rte", "mid", seed, mid, 0.5, lr=5e-5)
        _fake_run(tmp_path, "rte", "fast", seed, high, 0.5, lr=1e-4)
    for seed, value in ((3, 0.65), (4, 0.99)):
        _fake_run(tmp_path, "rte", "fast", seed, value, 0.5, lr=1e-4)
    _fake_run(tmp_path, "cola", "baseline", 1, 0.3, 0.0, lr=2e-5)  # one seed: not a grid cell yet
    cell, lr, values = ablate.grid_best(ablate.collect(str(tmp_path)))["rte"]
    assert (cell, lr, values) == ("mid", 5e-5, {1: 0.70, 2: 0.68})
    assert "cola" not in ablate.grid_best(ablate.collect(str(tmp_path)))
    _fake_run(tmp_path, "rte", "slow", 3, 0.9, 0.5, lr=1e-5)  # shares < 2 seeds with the others: own means
    _fake_run(tmp_path, "rte", "slow", 5, 0.9, 0.5, lr=1e-5)
    assert ablate.grid_best(ablate.collect(str(tmp_path)))["rte"][0] == "slow"


def test_no_lr_range_test_columns_without_auto_runs(tmp_path):
    _fake_run(tmp_path, "rte", "baseline", 1, 0.6, 0.5)
    ablate.report(str(tmp_path))
    assert "lr_find" not in (tmp_path / "summary.csv").read_text()
    assert "LR range tests" not in (tmp_path / "summary.md").read_text()


def test_time_ratio_is_seed_paired(tmp_path):
    # the machine got 3x slower between seeds 2 and 3; the frozen cell has only finished seed 3 so far
    for seed, seconds in ((1, 60.0), (2, 60.0), (3, 180.0)):
        _fake_run(tmp_path, "rte", "baseline", seed, 0.6, 0.5, seconds=seconds)
    _fake_run(tmp_path, "rte", "top3x5-freeze", 3, 0.6, 0.5, seconds=120.0)
    summary = {s["cell"]: s for s in ablate.report(str(tmp_path))}
    s = summary["top3x5-freeze"]
    # unpaired medians would say 120 / 60 = 2.0 (slower); paired with seed 3's baseline it is 120 / 180
    assert s["train_time_s"] == 120.0 and s["time_ratio"] == pytest.approx(2 / 3)
    assert summary["baseline"]["time_ratio"] == 1.0
    assert "| 2m00s | 0.67 |" in (tmp_path / "summary.md").read_text()


def _timed(seconds, boot="boot-1", threads=2, share=0.97, started=None, ended=None):
    return {"train_time_s": seconds, "boot_id": boot, "torch_threads": threads, "cpu_share": share,
            "started_s": started, "ended_s": ended, "shared_load": False}


def test_times_are_compared_only_when_measured_under_the_same_load():
    ratio = ablate.time_ratio
    assert ratio({1: _timed(30)}, {1: _timed(60)}) == (0.5, 1, 1)
    assert math.isnan(ratio({1: _timed(10)}, {2: _timed(10)})[0])  # no seed in common
    assert math.isnan(ratio({1: _timed(30, boot="boot-2")}, {1: _timed(60)})[0])  # another machine (or reboot)
    assert math.isnan(ratio({1: _timed(30, threads=1)}, {1: _timed(60)})[0])  # other thread count
    # runs without a host record (older versions): the same machine only when started within 12 hours
    old = {1: _timed(30, boot=None, started=0.0), 2: _timed(30, boot=None, started=0.0)}
    base = {1: _timed(60, boot=None, started=3600.0), 2: _timed(60, boot=None, started=2 * 86400.0)}
    assert ratio(old, base) == (0.5, 1, 2)
    assert math.isnan(ratio({1: _timed(30, boot=None)}, {1: _timed(60, boot=None)})[0])  # nothing known
    # shared load: a low CPU share, or two runs of the folder overlapping in time (two chains side by side)
    rows = [{**_timed(30, share=0.45), "seed": 1}, {**_timed(60, started=0.0, ended=100.0), "seed": 2},
            {**_timed(60, started=50.0, ended=150.0), "seed": 3}, {**_timed(60, started=200.0, ended=300.0), "seed": 4}]
    ablate.mark_shared_load(rows)
    assert [r["shared_load"] for r in rows] == [True, True, True, False]


def test_shared_load_times_are_marked_in_the_table(tmp_path):
    for seed in (1, 2):
        _fake_run(tmp_path, "rte", "baseline", seed, 0.6, 0.5, seconds=60.0)
    _fake_run(tmp_path, "rte", "top3x5-freeze", 1, 0.6, 0.5, seconds=120.0, host={**HOST, "cpu_share": 0.4})
    _fake_run(tmp_path, "rte", "top3x5-freeze", 2, 0.6, 0.5, seconds=30.0)
    ablate.report(str(tmp_path))
    md = (tmp_path / "summary.md").read_text()
    # the median time is marked as measured under shared load; the ratio uses the one comparable seed only
    assert "| 1m15s † | 0.50 (1 of 2) |" in md


def test_crashed_runs_are_listed_under_the_tables(tmp_path):
    _fake_run(tmp_path, "rte", "baseline", 1, 0.6, 0.5)
    crashed = tmp_path / "rte" / "top3x5" / "seed1"
    crashed.mkdir(parents=True)
    (crashed / "status.json").write_text(json.dumps({"task": "rte", "cell": "top3x5", "seed": 1, "status": "failed",
                                                     "error": "RuntimeError: boom"}))
    running = tmp_path / "rte" / "top3x5" / "seed2"  # a run still going is not a crash
    running.mkdir(parents=True)
    (running / "status.json").write_text(json.dumps({"task": "rte", "cell": "top3x5", "seed": 2, "status": "running"}))
    assert ablate.crashed_cells(str(tmp_path)) == ["rte/top3x5/seed1"]
    ablate.report(str(tmp_path))
    md = (tmp_path / "summary.md").read_text()
    assert md.endswith("| baseline | 60.00 | 60.00 | 1 | — | 1m00s | 1.00 |\n\n"
                       "Runs that crashed (no results; see their status.json): rte/top3x5/seed1\n")


def test_report_counts_a_collapsed_regression_run_as_failed(tmp_path):
    # a constant STS-B prediction scores 0 (the "majority" baseline); a collapsed run predicts an almost constant
    # value and scores a little above it by chance: failed too, below REGRESSION_FAILED (0.2)
    for seed, value in ((1, 0.053), (2, 0.1999), (3, 0.2), (4, 0.86), (5, -0.06)):
        _fake_run(tmp_path, "stsb", "uniform-5x", seed, value, 0.0, metric="spearmanr")
    _fake_run(tmp_path, "rte", "uniform-5x", 1, 0.54, 0.53)  # classification keeps Mosbach's threshold only
    summary = {(s["task"], s["cell"]): s for s in ablate.report(str(tmp_path))}
    assert summary[("stsb", "uniform-5x")]["failed"] == 3
    assert summary[("rte", "uniform-5x")]["failed"] == 0
    assert "for a regression task (STS-B) when its correlation is below 0.2" in (tmp_path / "summary.md").read_text()


def test_report_counts_nan_and_missing_metrics_as_failed(tmp_path):
    for seed, value in ((1, 0.6), (2, 0.62)):
        _fake_run(tmp_path, "stsb", "baseline", seed, value, 0.0, metric="spearmanr")
    _fake_run(tmp_path, "stsb", "top3x5", 1, 0.64, 0.0, metric="spearmanr")
    _fake_run(tmp_path, "stsb", "top3x5", 2, math.nan, 0.0, metric="spearmanr")  # a diverged run's NaN metric
    missing = tmp_path / "stsb" / "top3x5" / "seed3"
    missing.mkdir(parents=True)
    (missing / "results.json").write_text(json.dumps({"task": "stsb", "seed": 3, "main_metric": "spearmanr",
                                                      "metrics": {}, "majority_baseline": {"spearmanr": 0.0}}))
    summary = {s["cell"]: s for s in ablate.report(str(tmp_path))}
    s = summary["top3x5"]
    assert s["n"] == 1 and s["failed"] == 2 and s["mean"] == pytest.approx(0.64)
    assert s["diff"]["n"] == 1 and s["diff"]["mean"] == pytest.approx(0.04)  # seed 1 only: seed 2 has no score
    assert "| top3x5 | 1 | 64.00 ± 0.00 | 64.00 | 64.00 | 2 |" in (tmp_path / "summary.md").read_text()
    assert not ablate.is_complete(str(tmp_path / "stsb" / "top3x5" / "seed2"))  # a new sweep runs it again


def _sweep_with_a_long_run(setup, out, *extra, cells=("baseline",)):
    """A sweep whose cells train for minutes; returns (sweep process, pids of the training processes of ``cells``,
    once they have all started)."""
    cmd = _cmd(setup, out, *extra) + ["--num_train_epochs", "500"]
    cmd[cmd.index("--seeds") + 1] = "1"
    sweep = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    locks = [out / "rte" / cell / "seed1" / ".hf_layerwise.lock" for cell in cells]
    deadline = time.time() + 600  # start-up under load (tests in parallel) can take a minute
    while time.time() < deadline and not all(p.exists() and p.read_text().startswith("pid") for p in locks):
        time.sleep(0.1)
    assert all(p.exists() for p in locks), "the runs did not start"
    return sweep, [int(p.read_text().split()[1]) for p in locks]


def _gone(pid, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1].startswith(("Z", "X")):  # a zombie nobody reaped has stopped too
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def _lock_free(path, timeout=30.0):
    """The lock on ``path`` can be taken (within ``timeout``: a process's last threads release it as they exit)."""
    import fcntl

    deadline = time.time() + timeout
    with open(path, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(f, fcntl.LOCK_UN)
                return True
            except BlockingIOError:
                if time.time() > deadline:
                    return False
                time.sleep(0.1)


@pytest.mark.slow
def test_sweep_killed_outright_stops_its_run(setup, tmp_path):
    """SIGKILL cannot be forwarded, and under `accelerate launch` the training process is a grandchild: it notices
    that the sweep is gone (HF_LAYERWISE_SWEEP_PID) and stops, releasing the folder for the next sweep."""
    launcher = f"{sys.executable} -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no"
    sweep, (run_pid,) = _sweep_with_a_long_run(setup, tmp_path, "--launcher", launcher)
    try:
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
        assert _gone(run_pid), "the training process outlived the sweep"
        assert _lock_free(tmp_path / "rte" / ".ablate.lock")
        assert _lock_free(tmp_path / "rte" / "baseline" / "seed1" / ".hf_layerwise.lock")
    finally:
        try:
            os.killpg(sweep.pid, signal.SIGKILL)  # whatever is left of the sweep's own group
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_sweep_stopped_by_ctrl_c_stops_its_run(setup, tmp_path):
    """SIGINT (Ctrl-C); SIGTERM goes through the same handler. Two runs at a time (--jobs 2): both are stopped."""
    signum = signal.SIGINT
    sweep, run_pids = _sweep_with_a_long_run(setup, tmp_path, "--jobs", "2", cells=("baseline", "lr5x"))
    os.kill(sweep.pid, signum)
    output = sweep.communicate(timeout=60)[0]
    assert sweep.returncode == 128 + signum, output
    assert "sweep interrupted (SIGINT) during rte/baseline/seed1, rte/lr5x/seed1: the runs were stopped" in output
    assert "the same command continues the sweep" in output
    assert all(_gone(pid, 5) for pid in run_pids)
    for cell in ("baseline", "lr5x"):
        status = json.loads((tmp_path / "rte" / cell / "seed1" / "status.json").read_text())
        assert status["status"] == "interrupted" and status["error"] == signal.Signals(signum).name
    assert not ablate.crashed_cells(str(tmp_path))  # interrupted is not a crash: the next sweep runs it again
