"""Frozen-feature cache: training step time and activation memory, cached against uncached against the ideal.

    python bench/cache.py            # MiniLM (pretrained) and a bert-base-sized random BERT, cuts L-1, L-3, L/2
    python bench/cache.py --quick    # MiniLM only, fewer steps, batch 16: under a minute

For each model and cut (embeddings and blocks 1..cut frozen, preset baseline above), one model trains three ways,
alternating step by step in rounds (the machine's noise hits all three alike):

* ``uncached``: the usual step, the frozen bottom computed forward (no backward: it is frozen);
* ``cached``: :class:`hf_layerwise.FrozenFeatureCache` (float16 states) -- what ``--cache_frozen`` runs;
* ``ideal``: only what has to run: blocks cut+1..L, pooler and classifier, fed the states directly (already on the
  device, padded, float32): the trainable-part-only lower bound.

Each step is forward, backward, gradient clipping and AdamW on real RTE batches (32 pairs, dynamic padding, at most
128 tokens). Reported: median step time, ``cached / ideal`` (target <= 1.15) and ``uncached / cached``; the memory
autograd keeps for backward per step (the activation memory; on CUDA also the peak allocated); the cache's size; and
the pre-pass cost per batch, from which ``3-epoch run speedup`` = 3 uncached epochs / (pre-pass + 3 cached epochs)
over the training steps alone. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minilm_batches import GLUE_DIR, minilm_path  # noqa: E402

from hf_layerwise import LayerwiseConfig, create_optimizer, discover_layers, set_stage  # noqa: E402
from hf_layerwise.feature_cache import CACHE_ROW, FrozenFeatureCache, add_cache_rows  # noqa: E402
from hf_layerwise.glue import get_task, load_glue  # noqa: E402
from hf_layerwise.glue.features import tokenize_glue  # noqa: E402

MODES = ("uncached", "cached", "ideal")


def rte_rows(n: int):
    """The first ``n`` tokenized RTE training pairs with their cache rows, and a collator (MiniLM's vocabulary)."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    data = tokenize_glue(load_glue("rte", data_dir=GLUE_DIR), tokenizer, get_task("rte"), 128)["train"]
    data = add_cache_rows({"train": data.select(range(n)).remove_columns("idx")})["train"]
    return data, DataCollatorWithPadding(tokenizer)


def make_model(name: str):
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    if name == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, num_labels=2)  # bert-base-uncased's shape, random weights
    return AutoModelForSequenceClassification.from_config(config)


def ideal_forward(model, cut: int, states: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Blocks cut+1..L, pooler, dropout, classifier and the loss, from the states (BERT layout)."""
    from transformers.masking_utils import create_bidirectional_mask

    bert = model.bert
    extended = create_bidirectional_mask(config=bert.config, inputs_embeds=states, attention_mask=mask)  # as BertModel
    hidden = states
    for block in bert.encoder.layer[cut:]:
        hidden = block(hidden, extended)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    logits = model.classifier(model.dropout(bert.pooler(hidden)))
    return torch.nn.functional.cross_entropy(logits, labels)


class SavedBytes:
    """Bytes autograd saves for backward during a forward (its activation memory)."""

    def __init__(self) -> None:
        self.total = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.total += tensor.numel() * tensor.element_size()
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def bench_cut(model, cut: int, batches: list[dict], data, collate, steps: int, rounds: int,
              device: torch.device) -> dict:
    layers = discover_layers(model)
    cfg = LayerwiseConfig(freeze_below=cut, top_k=0, top_lr_multiplier=1.0)
    set_stage(model, cfg, layers, 0)
    optimizer = create_optimizer(model, cfg, lr=2e-5, layers=layers)
    trainable = [p for p in model.parameters() if p.requires_grad]
    cache = FrozenFeatureCache(model, cut=cut, layers=layers)
    started = time.perf_counter()
    cache.build([data], collate_fn=collate, batch_size=len(batches[0]["input_ids"]))
    build_per_batch = (time.perf_counter() - started) / len(batches)
    ideal_inputs = []  # the ideal's states are ready on the device, padded and float32: no gather, no checks
    for batch in batches:
        with cache.use(batch):
            ideal_inputs.append(cache._states.clone())

    def step(mode: str, i: int, saved: SavedBytes | None = None) -> None:
        batch = batches[i % len(batches)]
        with saved.hooks() if saved else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            if mode == "uncached":
                loss = model(**{k: v for k, v in batch.items() if k != CACHE_ROW}).loss
            elif mode == "cached":
                with cache.use(batch) as inputs:
                    loss = model(**inputs).loss
            else:
                loss = ideal_forward(model, cut, ideal_inputs[i % len(batches)], batch["attention_mask"],
                                     batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.eval()  # the ideal computes what the cached path computes (dropout off): a check of the bench itself
    with torch.no_grad(), cache.use(batches[0]) as inputs:
        want = model(**inputs).loss
        got = ideal_forward(model, cut, ideal_inputs[0], batches[0]["attention_mask"], batches[0]["labels"])
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (float(got), float(want))
    model.train()
    times = {m: [] for m in MODES}
    activation, peak = {}, {}
    for mode in MODES:  # warm-up (optimizer state, allocator) and the memory of one step
        step(mode, 0)
        saved = SavedBytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step(mode, 1, saved)
        activation[mode] = saved.total / 2**20
        peak[mode] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    for _ in range(rounds):
        for i in range(steps):
            for mode in MODES:
                sync()
                t0 = time.perf_counter()
                step(mode, i)
                sync()
                times[mode].append(time.perf_counter() - t0)
    median = {m: statistics.median(t) for m, t in times.items()}
    stats = cache.stats()
    cache.close()
    run_speedup = 3 * median["uncached"] / (build_per_batch + 3 * median["cached"])
    return {"cut": cut, "num_layers": layers.num_layers,
            "step_s": {m: round(v, 4) for m, v in median.items()},
            "cached_vs_ideal": round(median["cached"] / median["ideal"], 3),
            "uncached_vs_cached": round(median["uncached"] / median["cached"], 3),
            "ideal_vs_uncached": round(median["ideal"] / median["uncached"], 3),
            "prepass_per_batch_s": round(build_per_batch, 4), "run_speedup_3_epochs": round(run_speedup, 3),
            "activation_mb": {m: round(v, 1) for m, v in activation.items()},
            "peak_allocated_mb": peak if device.type == "cuda" else None,
            "cache_mb_per_1k_examples": round((stats["memory_bytes"] + stats["disk_bytes"]) / 2**20
                                              * 1000 / stats["examples"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM only, fewer steps, batch 16: under a minute")
    parser.add_argument("--models", default=None, help="comma-separated: minilm, bert-base (default both; MiniLM with "
                        "--quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode and round")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="distinct RTE batches cycled through")
    parser.add_argument("--batch_size", type=int, default=None, help="default 32 (16 with --quick)")
    args = parser.parse_args()
    batch_size = args.batch_size or (16 if args.quick else 32)
    steps = args.steps or (2 if args.quick else 4)
    rounds = args.rounds or (1 if args.quick else 3)
    n_batches = args.batches or (3 if args.quick else 6)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data, collate = rte_rows(n_batches * batch_size)
    batches = [{k: v.to(device) for k, v in collate([data[i * batch_size + j] for j in range(batch_size)]).items()}
               for i in range(n_batches)]
    summary = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, "
               f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "batch_size": batch_size,
               "steps": steps, "rounds": rounds, "models": {}}
    print(f"RTE batches of {batch_size} (dynamic padding, <= 128 tokens), {steps} steps x {rounds} rounds per mode, "
          f"interleaved; {summary['device']}")
    print(f"{'model':10} {'cut':>5} {'uncached s':>10} {'cached s':>9} {'ideal s':>8} {'cached/ideal':>12} "
          f"{'uncached/cached':>15} {'3-ep run x':>10} {'act MB unc/cac/ideal':>21} {'cache MB/1k ex':>14}")
    for name in (args.models or ("minilm" if args.quick else "minilm,bert-base")).split(","):
        model = make_model(name).to(device)
        num_layers = discover_layers(model).num_layers
        cuts = sorted({num_layers - 1, num_layers - 3, num_layers // 2}, reverse=True)
        summary["models"][name] = {}
        for cut in cuts:
            r = bench_cut(model, cut, batches, data, collate, steps, rounds, device)
            summary["models"][name][f"freeze_below={cut}"] = r
            s, a = r["step_s"], r["activation_mb"]
            print(f"{name:10} {cut:>2}/{num_layers:<2} {s['uncached']:>10.3f} {s['cached']:>9.3f} {s['ideal']:>8.3f} "
                  f"{r['cached_vs_ideal']:>12.2f} {r['uncached_vs_cached']:>15.2f} {r['run_speedup_3_epochs']:>10.2f} "
                  f"{a['uncached']:>7.0f}/{a['cached']:.0f}/{a['ideal']:.0f}{'':>3} {r['cache_mb_per_1k_examples']:>14.1f}")
        del model
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
