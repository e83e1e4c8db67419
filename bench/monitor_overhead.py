"""Cost of the health monitor: monitored (every 50 steps) vs unmonitored training, side by side in one process.

    python bench/monitor_overhead.py [--chunk 50] [--rounds 2] [--batch 16]

all-MiniLM-L6-v2 on real RTE batches. The same model alternates unmonitored and monitored chunks of
``--chunk`` steps (A B A B ...; each monitored chunk holds exactly one measured step), and the extra work of
the measured steps is also timed directly. Prints the slowdown as a ratio of total times.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from hf_layerwise import HealthConfig, HealthMonitor, LayerwiseConfig, create_optimizer
from minilm_batches import load_model, rte_batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    model = load_model()
    batches = rte_batches(args.chunk, batch_size=args.batch)
    optimizer = create_optimizer(model, LayerwiseConfig.preset("top3x10"), lr=2e-5)
    run_dir = tempfile.mkdtemp(prefix="monitor-bench-")
    monitor = HealthMonitor(model, HealthConfig(every_n_steps=args.chunk), run_dir=run_dir)
    model.train()
    totals = {"off": 0.0, "on": 0.0}
    measured_extra = []
    step = 0

    def train_step(batch, monitored: bool) -> None:
        nonlocal step
        step += 1
        extra = 0.0
        if monitored:
            t = time.perf_counter()
            monitor.begin(step)
            extra += time.perf_counter() - t
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if monitored:
            t = time.perf_counter()
            monitor.before_optimizer_step()
            extra += time.perf_counter() - t
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if monitored:
            t = time.perf_counter()
            if monitor.end(optimizer, loss.detach()):
                measured_extra.append(extra + time.perf_counter() - t)

    for batch in batches[:3]:  # warm-up
        train_step(batch, False)
    step = 0
    for _ in range(args.rounds):
        for mode in ("off", "on"):
            start = time.perf_counter()
            for batch in batches:
                train_step(batch, mode == "on")
            totals[mode] += time.perf_counter() - start
    monitor.close()
    steps = args.rounds * args.chunk
    print(f"all-MiniLM-L6-v2, real RTE batches ({args.batch} x up to 128 tokens), {steps} steps per mode, "
          f"chunks of {args.chunk} alternating, every_n_steps={args.chunk}")
    print(f"unmonitored: {totals['off'] / steps:.3f} s/step; monitored: {totals['on'] / steps:.3f} s/step; "
          f"ratio monitored/unmonitored = {totals['on'] / totals['off']:.4f}")
    per = sum(measured_extra) / len(measured_extra)
    print(f"measured steps: {len(measured_extra)}, extra work each {per:.3f} s = "
          f"{100 * per / (args.chunk * totals['off'] / steps):.2f}% of {args.chunk} unmonitored steps")
    print(f"(health log in {os.path.join(run_dir, 'health.jsonl')})")


if __name__ == "__main__":
    main()
