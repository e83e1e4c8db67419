"""Issue 27: the layer-wise LR study at 6 blocks (MiniLM-L6) and 12 blocks (e5-small), side by side.

    python results/me5-small/depths.py > results/me5-small/depths.md     (repository root)

For each model folder and each of the study's cells: the four-task GLUE-style average (CoLA MCC, MRPC F1, RTE
accuracy, STS-B Spearman, x100) over the seeds that finished all four tasks, and its seed-paired differences to
``baseline`` (2e-5 everywhere) and to ``uniform-5x`` (1e-4 everywhere) with 95% t intervals, computed the way
``ablate.py report`` computes its GLUE-style average section (per-seed averages paired by seed). ``time vs baseline``
is the report's all-tasks ratio (per-task seed-paired time ratios over comparable pairs, weighted by the baseline's
time per task). A model's differences pair seeds of that model only: the two depths are different models, so the
table sets their numbers side by side and does not pair them.

What "top 3" and "frozen" mean at each depth: at 6 blocks, top 3 is half the encoder and ``top3x5-freeze`` freezes
the other half (embeddings + blocks 1-3); at 12 blocks top 3 is a quarter, ``top3x5-freeze`` freezes embeddings +
blocks 1-6 and ``top3x5-freeze25`` embeddings + blocks 1-3. Cells a model has no run of show ``—``.

"Per task" sets the same comparisons per task side by side (the main metric x100, mean over the cell's seeds, its
seed-paired differences on that task): what a partial sweep already shows before any seed has all four tasks.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "recipes"))

from ablate import (BASELINE, _diff_text, _ratio_text, all_tasks_time_ratio, collect, paired_difference,  # noqa: E402
                    seed_averages, summarize)

TASKS = ("cola", "mrpc", "rte", "stsb")
REFERENCES = (BASELINE, "uniform-5x")
# the study's cells (issue 27), then the grid's 5e-5 cell (issue 26's held-out check b; issue 27's "best fixed LR"
# cell where it differs from 1e-4)
CELLS = ("baseline", "uniform-5x", "top3x5", "top3x5-freeze", "top3x5-freeze25", "llrd-0.8", "uniform-2.5x")
MODELS = (  # (name, folder under the repository root, encoder blocks)
    ("MiniLM-L6", "results/minilm", 6),
    ("e5-small", "results/me5-small", 12),
)


def model_rows(folder: str, blocks: int) -> list[dict]:
    """The folder's runs of the four tasks; a run whose results.json records another number of encoder blocks than
    the model has is an error (a run of another model in the wrong folder)."""
    rows = [r for r in collect(folder) if r["task"] in TASKS]
    for root, _, files in os.walk(folder):
        if "results.json" in files:
            try:
                with open(os.path.join(root, "results.json")) as f:
                    recorded = json.load(f).get("num_layers")
            except (OSError, ValueError, AttributeError):  # unreadable: collect() leaves it out of the rows too
                continue
            if recorded is not None and recorded != blocks:
                raise SystemExit(f"{root}: results.json records num_layers={recorded}, but {folder} is the "
                                 f"{blocks}-block model's folder")
    return rows


def model_table(rows: list[dict]) -> dict[str, dict]:
    """Per cell of CELLS: seeds (with all four tasks), runs (any task), average, diffs to REFERENCES, time ratio."""
    # ablate's per-seed averages need every task present in the rows: all four here, or no seed counts yet
    per_seed = seed_averages(rows) if {r["task"] for r in rows} == set(TASKS) else {}
    summary = summarize(rows)
    out = {}
    for cell in CELLS:
        mine = per_seed.get(cell, {})
        out[cell] = {
            "runs": sum(r["cell"] == cell for r in rows), "seeds": len(mine),
            "average": statistics.mean(mine.values()) if mine else math.nan,
            "vs": {ref: None if cell == ref else paired_difference(mine, per_seed.get(ref, {})) for ref in REFERENCES},
            # over the four tasks, as the average: — while the cell (or the baseline) lacks a task
            "time_ratio": all_tasks_time_ratio(summary, cell) if {s["task"] for s in summary} == set(TASKS)
            and any(s["cell"] == cell for s in summary) else math.nan,
        }
    return out


def task_table(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """Per task and cell of CELLS with a run: seeds (with a score), mean score, seed-paired diffs to REFERENCES."""
    scores: dict[str, dict[str, dict[int, float]]] = {}
    for r in rows:
        if r["value"] is not None:
            scores.setdefault(r["task"], {}).setdefault(r["cell"], {})[r["seed"]] = r["value"]
    return {task: {cell: {"seeds": len(by_seed[cell]), "mean": statistics.mean(by_seed[cell].values()),
                          "vs": {ref: None if cell == ref else paired_difference(by_seed[cell], by_seed.get(ref, {}))
                                 for ref in REFERENCES}}
                   for cell in CELLS if cell in by_seed}
            for task, by_seed in scores.items()}


def evaluate(root: str = ROOT) -> dict[str, dict]:
    out = {}
    for name, folder, blocks in MODELS:
        rows = model_rows(os.path.join(root, folder), blocks)
        out[name] = {**model_table(rows), "per_task": task_table(rows)}
    return out


def markdown(tables: dict[str, dict]) -> str:
    lines = ["# 6 blocks vs 12 blocks (issue 27)", "",
             "Generated by `python results/me5-small/depths.py` from the committed runs of "
             + " and ".join(f"`{folder}` ({name}, {blocks} blocks)" for name, folder, blocks in MODELS)
             + ". Four-task average (CoLA, MRPC, RTE, STS-B; x100) over the seeds that finished all four tasks "
             "(`seeds`); differences are seed-paired within one model, with 95% t intervals; `time vs baseline` as "
             "in `ablate.py report`, over the four tasks (— when a task lacks a run or a comparable pair). "
             "`runs`: runs of the cell committed, any "
             "task (a complete cell has 4 per seed). `—`: no such run yet.", "",
             "| cell | model | runs | seeds | average | diff to baseline [95% CI] | diff to uniform-5x [95% CI] "
             "| time vs baseline |",
             "|---|---|---:|---:|---:|---|---|---:|"]
    for cell in CELLS:
        for name, table in tables.items():
            c = table[cell]
            lines.append(f"| {cell} | {name} | {c['runs']} | {c['seeds']} | "
                         + ("—" if math.isnan(c["average"]) else f"{100 * c['average']:.2f}") + " | "
                         + " | ".join(_diff_text(c["vs"][ref]) for ref in REFERENCES)
                         + f" | {_ratio_text(c['time_ratio'])} |")
    lines += ["", "## Per task", "",
              "Main metric x100 (CoLA MCC, MRPC F1, RTE accuracy, STS-B Spearman): per model the seeds with a run "
              "(`n`), their mean and the seed-paired differences on that task (95% t intervals). Rows where neither "
              "model has a run are left out.", "",
              "| task | cell | " + " | ".join(f"{name} n | {name} mean | {name} vs baseline | {name} vs uniform-5x"
                                            for name in tables) + " |",
              "|---|---|" + "---:|---:|---|---|" * len(tables)]
    for task in TASKS:
        for cell in CELLS:
            cells = [tables[name]["per_task"].get(task, {}).get(cell) for name in tables]
            if not any(cells):
                continue
            lines.append(f"| {task} | {cell} | " + " | ".join(
                "— | — | — | —" if c is None else
                f"{c['seeds']} | {100 * c['mean']:.2f} | " + " | ".join(_diff_text(c["vs"][ref]) for ref in REFERENCES)
                for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(evaluate()))
