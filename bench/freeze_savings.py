"""What freezing saves: step time, peak memory and optimizer state, side by side, on all-MiniLM-L6-v2.

    python bench/freeze_savings.py [--steps 12] [--rounds 2]

Each configuration trains in its own fresh process (so peak RSS is its own), alternating A B C A B C ...;
the printed ratios compare medians measured in this one run. Real RTE batches, batch 32, max length 128.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    "baseline": {"preset": "baseline"},
    "top3x5": {"preset": "top3x5"},
    "top3x5-freeze": {"preset": "top3x5-freeze"},
    "head-only": {"preset": "baseline", "freeze_below": 6},
}


def worker(name: str, steps: int) -> None:
    import torch

    from hf_layerwise import LayerwiseConfig, create_optimizer
    from minilm_batches import load_model, rte_batches

    spec = dict(CONFIGS[name])
    cfg = LayerwiseConfig.preset(spec.pop("preset"), **spec)
    model = load_model()
    batches = rte_batches(steps + 2)
    optimizer = create_optimizer(model, cfg, lr=2e-5)
    model.train()
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:  # the first two steps warm up allocators and create optimizer state
            times.append(time.perf_counter() - start)
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t))
    print(json.dumps({"name": name, "step_s": statistics.median(times),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "optimizer_state_mb": state_bytes / 2**20,
                      "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", default=None)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    results: dict[str, list[dict]] = {n: [] for n in CONFIGS}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for _ in range(args.rounds):
        for name in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--worker", name, "--steps", str(args.steps)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    base = results["baseline"]
    base_step = statistics.median(r["step_s"] for r in base)
    base_rss = statistics.median(r["peak_rss_mb"] for r in base)
    print(f"all-MiniLM-L6-v2, real RTE batches (32 x up to 128 tokens), {args.steps} timed steps x {args.rounds} "
          "rounds per config, fresh process each")
    print(f"{'config':14} {'trainable':>11} {'step s':>8} {'time vs base':>12} {'peak RSS MB':>12} "
          f"{'RSS vs base':>11} {'Adam state MB':>13}")
    for name, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        rss = statistics.median(r["peak_rss_mb"] for r in runs)
        print(f"{name:14} {runs[0]['trainable']:>11,} {step:>8.3f} {step / base_step:>12.2f} {rss:>12.0f} "
              f"{rss / base_rss:>11.2f} {runs[0]['optimizer_state_mb']:>13.1f}")


if __name__ == "__main__":
    main()
