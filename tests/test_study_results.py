"""The committed study in results/minilm: its summary is what recipes/ablate.py computes from the committed runs'
results.json files, and the table in README.md is that summary's (no hand-edited or stale numbers)."""

import math
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))
import ablate  # noqa: E402

STUDY = os.path.join(ROOT, "results", "minilm")


# every committed study folder: its sweep's `ablate.py report` options (--compare_to cells, --baseline cell)
STUDIES = {"minilm": (("uniform-5x",), "baseline"), "minilm-sst2": (("uniform-5x",), "baseline"),
           "me5-small": (("uniform-5x",), "baseline"), "smollm2": ((), "lora")}


def test_every_study_folder_with_runs_is_checked():
    results = os.path.join(ROOT, "results")
    with_summary = {name for name in os.listdir(results) if os.path.isfile(os.path.join(results, name, "summary.csv"))}
    assert with_summary <= set(STUDIES), f"add {sorted(with_summary - set(STUDIES))} to STUDIES"


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_committed_summary_is_recomputed_from_the_committed_runs(name, tmp_path):
    study = os.path.join(ROOT, "results", name)
    if not os.path.isfile(os.path.join(study, "summary.md")):
        pytest.skip(f"results/{name} has no runs committed yet")
    compare_to, baseline = STUDIES[name]
    rows, _ = ablate.write_tables(study, str(tmp_path), compare_to, baseline)
    assert rows
    if name == "minilm":
        assert {r["cell"] for r in rows} >= {"baseline", "uniform-5x", "top3x5", "top3x5-freeze"}
    for table in ("summary.md", "summary.csv"):
        with open(os.path.join(study, table)) as committed:
            assert (tmp_path / table).read_text() == committed.read(), (
                f"results/{name}/{table} is stale: run `python recipes/ablate.py report results/{name} "
                + "".join(f"--compare_to {c} " for c in compare_to) + f"--baseline {baseline}` and commit it with the "
                "runs it summarizes")


@pytest.mark.parametrize("marker, name", [("study-table", "minilm"), ("smollm2-table", "smollm2")])
def test_readme_study_table_is_the_committed_summary(marker, name):
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    block = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", readme, re.S)
    assert block, f"README.md has no <!-- {marker} --> ... <!-- /{marker} --> block"
    table = block.group(1).strip().splitlines()
    with open(os.path.join(ROOT, "results", name, "summary.md")) as f:
        summary_lines = f.read().splitlines()
    assert len(table) >= 3 and table[0].startswith("| cell |")
    missing = [line for line in table if line not in summary_lines]
    assert not missing, f"README.md's {marker} is not in results/{name}/summary.md (copy it again): {missing}"


def test_lr_rules_table_is_recomputed_from_the_committed_runs():
    """results/minilm/lr_rules.md (issue 26: LR-finder rules scored against the fixed-LR grid) is what
    results/minilm/lr_rules.py computes from the committed curves and runs."""
    sys.path.insert(0, STUDY)
    import lr_rules

    with open(os.path.join(STUDY, "lr_rules.md")) as f:
        assert lr_rules.markdown(lr_rules.evaluate(STUDY)) == f.read(), (
            "results/minilm/lr_rules.md is stale: run `python results/minilm/lr_rules.py > results/minilm/lr_rules.md`")


def _write_run(folder, task, cell, seed, lr, score, lr_find=None):
    import json

    run = {"metrics": {"accuracy": score / 100}, "main_metric": "accuracy", "train_time_s": 100.0,
           "config": {"train": {"learning_rate": 2e-5 if lr_find else lr}},
           "layerwise": {"top_k": 0, "freeze_below": 0, "layer_decay": None, "freeze_embeddings": False}}
    if lr_find:
        run["lr_find"] = lr_find
    path = folder / task / cell / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(run))


def _held_out_study(tmp_path, folder, task, grid):
    """An empty study folder and, beside it, a held-out check's grid runs: {seed: {lr: score}}."""
    import lr_rules

    study, held = tmp_path / "minilm", tmp_path / folder
    study.mkdir()
    for seed, by_lr in grid.items():
        for cell, lr in lr_rules.HELD_OUT_GRID.items():
            _write_run(held, task, cell, seed, lr, by_lr[lr])
    return study, held


def test_held_out_check_is_scored_seed_paired_and_flags_a_collapse(tmp_path):
    """lr_rules.held_out: best grid LR by mean over complete seeds, lr-find seed-paired to that LR's run of the same
    seed, a run more than 5 points under the same seed's 2e-5 run counted as collapsed, the capped pick reported."""
    sys.path.insert(0, STUDY)
    import lr_rules

    study, held = _held_out_study(tmp_path, "minilm-sst2", "sst2", {1: {2e-5: 80.0, 5e-5: 84.0, 1e-4: 83.0},
                                                                    2: {2e-5: 81.0, 5e-5: 83.0, 1e-4: 86.0}})

    def test(pick, uncapped):
        return {"learning_rate": pick, "fallback": False, "time_s": 5.0,
                "tests": [{"rule": "centred_valley", "suggestions": {"centred_valley": uncapped},
                           "capped": uncapped != pick}]}

    _write_run(held, "sst2", "lr-find", 1, None, 85.0, test(4e-5, 4e-5))
    _write_run(held, "sst2", "lr-find", 2, None, 70.0, test(1e-4, 6e-4))
    _write_run(held, "sst2", "lr-find", 3, None, 90.0, test(5e-5, 5e-5))  # seed 3: no complete grid, unpaired
    _write_run(held, "sst2", "baseline", 3, 2e-5, 84.0)  # ... but its 2e-5 run is enough to judge a collapse
    (check,) = lr_rules.held_out(str(study))
    t = check["tasks"]["sst2"]
    # means: 2e-5 80.5, 5e-5 83.5, 1e-4 84.5 -> best 1e-4
    assert t["best"] == 1e-4 and t["seeds_complete"] == [1, 2]
    runs = t["runs"]
    assert runs["1"]["diff"] == 85.0 - 83.0 and runs["1"]["collapsed"] is False and runs["1"]["capped_from"] is None
    assert runs["2"]["diff"] == 70.0 - 86.0 and runs["2"]["collapsed"] is True and runs["2"]["capped_from"] == 6e-4
    assert runs["3"]["diff"] is None and runs["3"]["collapsed"] is False
    md = "\n".join(lr_rules._held_out_lines([check]))
    assert "| 4e-5: 85.00 | 1e-4 (capped from 6e-4): 70.00 | 5e-5: 90.00 | -7.00 [" in md
    assert md.rstrip().endswith("| 1 of 3 | 5.0% |")  # 1 collapse of 3 runs with a 2e-5 run; 5 s of 100 s each

    # a grid without any lr-find run yet: nothing judged, shown as such (not "0 of 0")
    for seed in (1, 2, 3):
        (held / "sst2" / "lr-find" / f"seed{seed}" / "results.json").unlink()
    (check,) = lr_rules.held_out(str(study))
    row = lr_rules._held_out_lines([check])[-1]
    assert row.endswith("| 1e-4 | — | — | — | — | — | — |"), row


def test_regression_default_is_scored_on_the_grid_run_at_the_fallback_beside_the_plain_test(tmp_path):
    """On STS-B --learning_rate auto trains at the fallback (5e-5) without a test (bit for bit the grid's run at that
    LR): lr_rules shows that row, scored on the uniform-2.5x runs (fallback, no test time), then the same at stop 42's
    2e-5 (the baseline runs), then the plain test's lr-find runs."""
    sys.path.insert(0, STUDY)
    import lr_rules

    study, held = _held_out_study(tmp_path, "me5-small", "stsb", {1: {2e-5: 80.0, 5e-5: 86.0, 1e-4: 84.0},
                                                                  2: {2e-5: 82.0, 5e-5: 85.0, 1e-4: 20.0}})
    _write_run(held, "stsb", "lr-find", 1, None, 87.0, {"learning_rate": 6e-5, "fallback": False, "time_s": 5.0,
                                                        "tests": [{"rule": "centred_valley", "capped": False,
                                                                   "suggestions": {"centred_valley": 6e-5}}]})
    (check,) = [c for c in lr_rules.held_out(str(study)) if c["folder"] == "../me5-small"]
    assert list(check["tasks"]) == ["stsb: no test, 5e-5", "stsb: no test, 2e-5 (stop 42)",
                                    "stsb: plain test (until stop 42)"]
    default, old, plain = check["tasks"].values()
    assert default["best"] == 5e-5 and set(default["runs"]) == {"1", "2"}
    one = default["runs"]["1"]
    assert one["fallback"] and one["lr"] == 5e-5 and one["test_s"] == 0.0 and one["diff"] == 0.0
    assert old["runs"]["1"]["lr"] == 2e-5 and old["runs"]["1"]["diff"] == 80.0 - 86.0
    assert not any(r["collapsed"] for r in default["runs"].values())
    assert plain["runs"]["1"]["diff"] == 87.0 - 86.0 and list(plain["runs"]) == ["1"]


def test_a_run_that_fell_back_at_2e5_is_scored_by_the_grid_run_at_the_current_fallback(tmp_path):
    """An lr-find run made when the fallback was 2e-5 stands, for the current default, as the same seed's uniform-2.5x
    run (its range test's time kept, marked `fallback*`), and as run in the row `(until stop 42)`; a task where no
    run fell back has no such row; without the grid run at the fallback the default has no run for that seed."""
    sys.path.insert(0, STUDY)
    import lr_rules

    study, held = _held_out_study(tmp_path, "me5-small", "mrpc", {1: {2e-5: 80.0, 5e-5: 86.0, 1e-4: 84.0},
                                                                  2: {2e-5: 82.0, 5e-5: 85.0, 1e-4: 88.0}})
    fell_back = {"learning_rate": 2e-5, "fallback": True, "time_s": 7.0,
                 "tests": [{"rule": "centred_valley", "capped": False, "suggestions": {"centred_valley": None}}]}
    _write_run(held, "mrpc", "lr-find", 1, None, 80.0, fell_back)
    _write_run(held, "mrpc", "lr-find", 2, None, 87.0, {**fell_back, "learning_rate": 7e-5, "fallback": False})
    _write_run(held, "mrpc", "lr-find", 3, None, 81.0, fell_back)  # seed 3 has no grid run at 5e-5
    (check,) = [c for c in lr_rules.held_out(str(study)) if c["folder"] == "../me5-small"]
    default, old = check["tasks"]["mrpc"], check["tasks"]["mrpc: fallback 2e-5 (until stop 42)"]
    one = default["runs"]["1"]
    assert one["stand_in"] == "uniform-2.5x" and one["lr"] == 5e-5 and one["score"] == 86.0 and one["test_s"] == 7.0
    assert one["diff"] == 86.0 - 84.0  # best: 1e-4 (mean 86.0 against 85.5)
    assert default["runs"]["2"]["stand_in"] is None and default["runs"]["2"]["diff"] == 87.0 - 88.0
    assert "3" not in default["runs"] and old["runs"]["3"]["score"] == 81.0
    assert old["runs"]["1"]["stand_in"] is None and old["runs"]["1"]["score"] == 80.0
    md = "\n".join(lr_rules._held_out_lines([check]))
    assert "| fallback*: 86.00 | 7e-5: 87.00 | — |" in md and "| fallback: 80.00 | 7e-5: 87.00 | fallback: 81.00 |" in md

    for seed in (1, 3):  # no run fell back: the row as run until stop 42 is the default's, not shown twice
        (held / "mrpc" / "lr-find" / f"seed{seed}" / "results.json").unlink()
        (held / "mrpc" / "lr-find" / f"seed{seed}").rmdir()
        _write_run(held, "mrpc", "lr-find", seed, None, 87.0, {**fell_back, "learning_rate": 7e-5, "fallback": False})
    (check,) = [c for c in lr_rules.held_out(str(study)) if c["folder"] == "../me5-small"]
    assert list(check["tasks"]) == ["mrpc"]

    # runs made after the move fell back at 5e-5 as they ran: there is no run "as run until stop 42" to show
    (held / "mrpc" / "lr-find" / "seed1" / "results.json").unlink()
    (held / "mrpc" / "lr-find" / "seed1").rmdir()
    _write_run(held, "mrpc", "lr-find", 1, None, 86.0, {**fell_back, "learning_rate": 5e-5})
    (check,) = [c for c in lr_rules.held_out(str(study)) if c["folder"] == "../me5-small"]
    assert list(check["tasks"]) == ["mrpc"] and check["tasks"]["mrpc"]["runs"]["1"]["stand_in"] is None


def test_the_fallback_is_the_grid_lr_with_the_best_four_task_average():
    """lr_rules.fallback_lrs on a made-up grid picks the LR with the highest mean four-task difference to each task's
    best; on the committed MiniLM grid that is the recipes' --lr_find_fallback default."""
    sys.path.insert(0, STUDY)
    import lr_rules
    from hf_layerwise.glue.arguments import LR_FIND_FALLBACK

    grid = {t: {s: {2e-5: 50.0, 5e-5: 60.0 + (t == "cola"), 1e-4: 61.0, 2e-4: 40.0} for s in lr_rules.SEEDS}
            for t in lr_rules.TASKS}
    best = {t: 5e-5 if t == "cola" else 1e-4 for t in lr_rules.TASKS}
    fb = lr_rules.fallback_lrs(grid, best)
    assert fb["choice"] == 1e-4 and fb["rows"][str(5e-5)]["worst"] == ("mrpc", -1.0)
    assert fb["rows"][str(1e-4)]["per_seed"] == [0.0] * len(lr_rules.SEEDS)
    committed = lr_rules.evaluate(STUDY)["fallback"]
    assert committed["choice"] == LR_FIND_FALLBACK, committed


def test_offset_tests_score_the_pick_as_the_recipes_take_it(tmp_path):
    """lr_rules.offset_tests: a curve without a usable valley counts at the fallback (5e-5), a pick is interpolated in
    log LR on the seed's grid, and the difference is to the seed's run at the best grid LR."""
    import json

    sys.path.insert(0, STUDY)
    import lr_rules

    grid = {"stsb": {1: {2e-5: 80.0, 1e-4: 90.0}, 2: {2e-5: 82.0, 1e-4: 86.0}}}
    for seed, (valley, pick) in {1: (True, 10 ** -4.5), 2: (False, 3e-4)}.items():
        path = tmp_path / "stsb" / lr_rules.OFFSET_TEST_CELL / f"seed{seed}"
        path.mkdir(parents=True)
        test = {"valley": valley, "suggestion": pick, "losses": [2.1, 2.0], "settings": {"label_offset": 2.7},
                "rule": "centred_valley", "suggestions": {"centred_valley": pick}, "capped": False}
        (path / "lr_find.json").write_text(json.dumps({"tests": [test]}))
    rows = lr_rules.offset_tests(str(tmp_path), grid, {"stsb": 1e-4})
    runs = rows["with the label offset"]
    assert runs["1"]["lr"] == 10 ** -4.5 and not runs["1"]["fallback"]
    halfway = 80.0 + 10.0 * math.log(10 ** -4.5 / 2e-5) / math.log(1e-4 / 2e-5)
    assert runs["1"]["score"] == pytest.approx(halfway) and runs["1"]["diff"] == pytest.approx(halfway - 90.0)
    at_fallback = 82.0 + 4.0 * math.log(5e-5 / 2e-5) / math.log(1e-4 / 2e-5)
    assert runs["2"]["fallback"] and runs["2"]["lr"] == 5e-5
    assert runs["2"]["diff"] == pytest.approx(at_fallback - 86.0)
    assert "without (the lr-find runs' tests)" not in rows  # none written
    line = lr_rules._offset_lines(rows)[-1]
    assert f"first loss 2.10; fallback: {at_fallback:.2f}" in line and "(n=2)" in line, line


def test_readme_held_out_table_is_the_generated_one():
    """README.md's held-out table (issue 26) is copied from results/minilm/lr_rules.md, not typed by hand."""
    with open(os.path.join(ROOT, "README.md")) as f:
        block = re.search(r"<!-- held-out-table -->\n(.*?)<!-- /held-out-table -->", f.read(), re.S)
    assert block, "README.md has no <!-- held-out-table --> ... <!-- /held-out-table --> block"
    table = [line.strip() for line in block.group(1).strip().splitlines()]
    with open(os.path.join(STUDY, "lr_rules.md")) as f:
        generated = f.read().splitlines()
    assert len(table) >= 3 and table[0].startswith("| check |")
    missing = [line for line in table if line not in generated]
    assert not missing, f"README.md's held-out table is not in results/minilm/lr_rules.md (copy it again): {missing}"


def _depths():
    sys.path.insert(0, os.path.join(ROOT, "results", "me5-small"))
    import depths
    return depths


def test_depths_table_is_recomputed_from_the_committed_runs():
    """results/me5-small/depths.md (issue 27: 6 vs 12 blocks) is what depths.py computes from the committed runs."""
    depths = _depths()
    with open(os.path.join(ROOT, "results", "me5-small", "depths.md")) as f:
        assert depths.markdown(depths.evaluate()) == f.read(), (
            "results/me5-small/depths.md is stale: run `python results/me5-small/depths.py > "
            "results/me5-small/depths.md` and commit it with the runs")


def test_depths_pairs_seeds_within_a_model_over_all_four_tasks(tmp_path):
    import json

    depths = _depths()
    metric = {"cola": "matthews_correlation", "mrpc": "f1", "rte": "accuracy", "stsb": "spearmanr"}

    def run(folder, task, cell, seed, score, num_layers):
        path = tmp_path / folder / task / cell / f"seed{seed}"
        path.mkdir(parents=True)
        (path / "results.json").write_text(json.dumps({
            "task": task, "seed": seed, "main_metric": metric[task], "metrics": {metric[task]: score},
            "majority_baseline": {metric[task]: 0.0}, "train_time_s": 100.0, "num_layers": num_layers,
            "host": {"boot_id": "boot-1", "cpu_count": 2, "torch_threads": 2, "cpu_share": 0.97}}))

    # 12 blocks: baseline 0.5 on every task; top3x5 +0.04 (seed 1) and +0.08 (seed 2) on every task;
    # seed 3 of top3x5 lacks RTE: not one of its seeds
    for seed, gain in ((1, 0.04), (2, 0.08), (3, 0.0)):
        for task in metric:
            run("results/me5-small", task, "baseline", seed, 0.5, 12)
            if not (seed == 3 and task == "rte"):
                run("results/me5-small", task, "top3x5", seed, 0.5 + gain, 12)
    run("results/minilm", "rte", "baseline", 1, 0.6, None)  # MiniLM's runs predate num_layers
    tables = depths.evaluate(str(tmp_path))
    top = tables["e5-small"]["top3x5"]
    assert top["runs"] == 11 and top["seeds"] == 2 and top["average"] == pytest.approx(0.56)
    d = top["vs"]["baseline"]  # paired diffs 0.04, 0.08: mean 0.06, sd 0.0282843, t(0.975, 1) = 12.7062047
    half = 12.7062047 * 0.0282843 / math.sqrt(2)
    assert (d["mean"], d["low"], d["high"], d["n"]) == pytest.approx((0.06, 0.06 - half, 0.06 + half, 2), rel=1e-5)
    assert top["vs"]["uniform-5x"] is None and top["time_ratio"] == pytest.approx(1.0)
    assert tables["MiniLM-L6"]["baseline"]["seeds"] == 0 and tables["MiniLM-L6"]["baseline"]["runs"] == 1
    assert math.isnan(tables["MiniLM-L6"]["baseline"]["time_ratio"])  # one task of four: no four-task time either
    md = depths.markdown(tables)
    assert "| top3x5 | e5-small | 11 | 2 | 56.00 | +6.00 [-19.41, +31.41] (n=2) | — | 1.00 |" in md
    assert "| llrd-0.8 | MiniLM-L6 | 0 | 0 | — | — | — | — |" in md
    # per task: every seed with a run of that task counts (RTE: seeds 1-2; CoLA: 1-3), paired within the model
    per_task = tables["e5-small"]["per_task"]
    assert per_task["rte"]["top3x5"]["seeds"] == 2 and per_task["cola"]["top3x5"]["seeds"] == 3
    assert per_task["cola"]["top3x5"]["vs"]["baseline"]["mean"] == pytest.approx(0.04)  # (0.04 + 0.08 + 0) / 3
    assert "| rte | top3x5 | — | — | — | — | 2 | 56.00 | +6.00 [-19.41, +31.41] (n=2) | — |" in md
    assert "| rte | baseline | 1 | 60.00 | — | — | 3 | 50.00 | — | — |" in md
    assert "| cola | llrd-0.8 |" not in md  # no run of it in either model

    # a run of another model in a folder: refused with the folder and both numbers
    run("results/me5-small", "cola", "llrd-0.8", 1, 0.5, 6)
    with pytest.raises(SystemExit, match="num_layers=6, but .*results/me5-small is the 12-block model's folder"):
        depths.evaluate(str(tmp_path))


def test_readme_depths_table_is_the_generated_one():
    """README.md's "6 blocks vs 12 blocks" tables (issue 27: four-task, per task) are copied from
    results/me5-small/depths.md."""
    with open(os.path.join(ROOT, "README.md")) as f:
        block = re.search(r"<!-- depths-table -->\n(.*?)<!-- /depths-table -->", f.read(), re.S)
    assert block, "README.md has no <!-- depths-table --> ... <!-- /depths-table --> block"
    with open(os.path.join(ROOT, "results", "me5-small", "depths.md")) as f:
        generated = f.read().splitlines()
    with open(os.path.join(ROOT, "README.md")) as f:
        per_task = re.search(r"<!-- depths-task-table -->\n(.*?)<!-- /depths-task-table -->", f.read(), re.S)
    assert per_task, "README.md has no <!-- depths-task-table --> ... <!-- /depths-task-table --> block"
    for table, header in ((block.group(1).strip().splitlines(), "| cell | model |"),
                          (per_task.group(1).strip().splitlines(), "| task | cell |")):
        assert len(table) >= 3 and table[0].startswith(header)
        missing = [line for line in table if line not in generated]
        assert not missing, f"README.md's depths table is not in results/me5-small/depths.md (copy it again): {missing}"
