"""The committed study in results/minilm: its summary is what recipes/ablate.py computes from the committed runs'
results.json files, and the table in README.md is that summary's (no hand-edited or stale numbers)."""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes"))
import ablate  # noqa: E402

STUDY = os.path.join(ROOT, "results", "minilm")
COMPARE_TO = ("uniform-5x",)  # as in results/minilm/sweep.sh


def test_committed_summary_is_recomputed_from_the_committed_runs(tmp_path):
    rows, _ = ablate.write_tables(STUDY, str(tmp_path), COMPARE_TO)
    assert {r["cell"] for r in rows} >= {"baseline", "uniform-5x", "top3x5", "top3x5-freeze"}
    for name in ("summary.md", "summary.csv"):
        with open(os.path.join(STUDY, name)) as committed:
            assert (tmp_path / name).read_text() == committed.read(), (
                f"results/minilm/{name} is stale: run `python recipes/ablate.py report results/minilm "
                "--compare_to uniform-5x` and commit it with the runs it summarizes")


def test_readme_study_table_is_the_committed_summary():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    block = re.search(r"<!-- study-table -->\n(.*?)<!-- /study-table -->", readme, re.S)
    assert block, "README.md has no <!-- study-table --> ... <!-- /study-table --> block"
    table = block.group(1).strip().splitlines()
    with open(os.path.join(STUDY, "summary.md")) as f:
        summary_lines = f.read().splitlines()
    assert len(table) >= 4 and table[0].startswith("| cell |")
    missing = [line for line in table if line not in summary_lines]
    assert not missing, f"README.md's study table is not in results/minilm/summary.md (copy it again): {missing}"


def test_lr_rules_table_is_recomputed_from_the_committed_runs():
    """results/minilm/lr_rules.md (issue 26: LR-finder rules scored against the fixed-LR grid) is what
    results/minilm/lr_rules.py computes from the committed curves and runs."""
    sys.path.insert(0, STUDY)
    import lr_rules

    with open(os.path.join(STUDY, "lr_rules.md")) as f:
        assert lr_rules.markdown(lr_rules.evaluate(STUDY)) == f.read(), (
            "results/minilm/lr_rules.md is stale: run `python results/minilm/lr_rules.py > results/minilm/lr_rules.md`")
