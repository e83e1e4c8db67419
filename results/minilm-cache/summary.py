"""The frozen-feature cache on real data: metric and time per run, cached against uncached, as a markdown table.

    python results/minilm-cache/summary.py > results/minilm-cache/summary.md

Reads results/minilm-cache/<task>/<cell>/seed<k>/results.json (sweep.sh) and, for an uncached seed not run there, the
committed study's results/minilm/<task>/top3x5-freeze/seed<k> (the same command; its times come from another day
and machine speed, so only side-by-side pairs -- both cells run here -- give a time ratio).
"""

from __future__ import annotations

import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
STUDY = os.path.join(HERE, "..", "minilm")
TASKS = ("rte", "mrpc")
SEEDS = (1, 2, 3)
UNCACHED, CACHED = "top3x5-freeze", "top3x5-freeze-cached"


def load(root: str, task: str, cell: str, seed: int) -> dict | None:
    path = os.path.join(root, task, cell, f"seed{seed}", "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def main() -> None:
    print("| task | seed | metric uncached | metric cached | uncached from | train s uncached | train s cached "
          "| time ratio | cache build s | cache MB |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    diffs: dict[str, list[float]] = {t: [] for t in TASKS}
    ratios: dict[str, list[float]] = {t: [] for t in TASKS}
    for task in TASKS:
        for seed in SEEDS:
            cached = load(HERE, task, CACHED, seed)
            here = load(HERE, task, UNCACHED, seed)
            plain = here or load(STUDY, task, UNCACHED, seed)
            if cached is None or plain is None:
                continue
            main_metric = cached["main_metric"]
            a, b = plain["metrics"][main_metric], cached["metrics"][main_metric]
            diffs[task].append(100 * (b - a))
            ratio = ""
            if here is not None:
                ratios[task].append(here["train_time_s"] / cached["train_time_s"])
                ratio = f"{ratios[task][-1]:.2f}x"
            cache = cached["feature_cache"]
            print(f"| {task} | {seed} | {main_metric} {100 * a:.1f} | {100 * b:.1f} | "
                  f"{'this sweep' if here else 'the study'} | {plain['train_time_s']:.0f} | "
                  f"{cached['train_time_s']:.0f} | {ratio} | {cache['build_time_s']:.0f} | "
                  f"{(cache['memory_bytes'] + cache['disk_bytes']) / 2**20:.0f} |")
    print()
    for task in TASKS:
        if diffs[task]:
            print(f"- {task}: cached - uncached {statistics.mean(diffs[task]):+.2f} points on average over "
                  f"{len(diffs[task])} seeds ({', '.join(f'{d:+.1f}' for d in diffs[task])})"
                  + (f"; time uncached / cached {', '.join(f'{r:.2f}x' for r in ratios[task])} (side by side)"
                     if ratios[task] else ""))


if __name__ == "__main__":
    main()
