"""Every GPU path of the recipes and the plugin's overheads in one run; the last line printed is one JSON summary.

    python bench/gpu_check.py --model_dir MINILM --data_dir GLUE [--out DIR]     # one GPU, about 8 minutes
    python bench/gpu_check.py --dry-run                                           # the same code on the CPU, tiny
                                                                                  # model, under 2 minutes
Sections (a section that fails is recorded in the summary, and the check goes on):

1. ``recipes``: recipes/glue.py in fp32, bf16 and bf16 + ``--torch_compile``; recipes/glue_trainer.py in bf16;
   recipes/glue.py under ``accelerate_configs/fsdp.yaml`` (FSDP1) and ``fsdp2.yaml`` with one process (GPU only:
   accelerate runs FSDP on GPUs only); and the library's own FSDP1/FSDP2 training (tests/wrapped_run.py, one
   process). MRPC, one epoch, batch 32, preset top3x5: training samples/s (evaluation and checkpoints excluded),
   evaluation and checkpoint seconds, F1.
2. ``anatomy``: one raw training step split into collate, forward, backward, clip and optimizer (CUDA events; wall
   clock on the CPU), fp32 and bf16, medians over the measured steps.
3. ``ratios`` on a bert-base-sized random model in bf16 (tiny in the dry run), measured in interleaved rounds until
   three consecutive rounds agree within 2%: 28 layer-wise AdamW groups vs 2; LayerwiseTrainer vs Trainer; preset
   top3x5-freeze vs the same freeze written by hand (requires_grad and two groups).

On the GPU machine, carry the MiniLM folder (weights as fp16 to fit the upload limit: ``--model_dir`` may hold
``model.fp16.safetensors``, cast back to fp32 here) and the GLUE MRPC folder. In the dry run the recipes run in this
process (accelerate's state reset between them) to stay under two minutes; on a GPU each runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "recipes"), os.path.join(ROOT, "tests"), os.path.dirname(__file__)]

from hf_layerwise import LayerwiseConfig, create_optimizer  # noqa: E402

BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072)
TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=6, num_attention_heads=2, intermediate_size=128)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------------- set-up
def prepare_inputs(args: argparse.Namespace, work: str) -> tuple[str, str]:
    """(model folder, GLUE folder): tiny generated ones in the dry run; the carried MiniLM (fp16 cast back to fp32)
    and GLUE folder otherwise."""
    if args.dry_run:
        from glue_fixtures import make_model_dir, write_glue_task

        write_glue_task(os.path.join(work, "glue"), "mrpc", n_train=128, n_dev=32)
        return make_model_dir(os.path.join(work, "model"), dropout=0.1), os.path.join(work, "glue")
    half = os.path.join(args.model_dir, "model.fp16.safetensors")
    if os.path.isfile(half) and not os.path.isfile(os.path.join(args.model_dir, "model.safetensors")):
        from safetensors.torch import load_file, save_file

        folder = os.path.join(work, "model")
        os.makedirs(folder)
        for name in os.listdir(args.model_dir):
            if name != "model.fp16.safetensors" and os.path.isfile(os.path.join(args.model_dir, name)):
                with open(os.path.join(args.model_dir, name), "rb") as src, open(os.path.join(folder, name), "wb") as dst:
                    dst.write(src.read())
        save_file({k: v.float() for k, v in load_file(half).items()}, os.path.join(folder, "model.safetensors"))
        return folder, args.data_dir
    return args.model_dir, args.data_dir


# ------------------------------------------------------------------------------------------------------ recipes
def recipe_args(model: str, data: str, out: str, dry: bool) -> list[str]:
    return ["--task_name", "mrpc", "--model_name_or_path", model, "--data_dir", data, "--output_dir", out,
            "--num_train_epochs", "1", "--per_device_train_batch_size", "32", "--learning_rate", "1e-4",
            "--preset", "top3x5", "--top_k", "2" if dry else "3", "--seed", "1", "--checkpointing_steps", "epoch",
            "--logging_steps", "10"]


def _summary_of(results_path: str) -> dict[str, Any]:
    with open(results_path) as f:
        r = json.load(f)
    return {"train_samples_per_second": r["train_samples_per_second"], "train_time_s": r["train_time_s"],
            "eval_time_s": r["eval_time_s"], "checkpoint_time_s": r["checkpoint_time_s"],
            "f1": r["metrics"].get("f1"), "peak_memory_mb": r["peak_memory_mb"]}


def _in_process(recipe: str, argv: list[str]) -> None:
    from accelerate.state import AcceleratorState

    from hf_layerwise.errors import run_cli

    module = __import__(recipe)
    AcceleratorState._reset_state(True)
    code = run_cli(module.main, argv)
    AcceleratorState._reset_state(True)
    if code:
        raise RuntimeError(f"{recipe}.py exited with {code}")


def _launch(cmd: list[str], timeout: float) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"exit code {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipes(model: str, data: str, work: str, dry: bool) -> dict[str, Any]:
    compile_backend = ["--torch_compile_backend", "eager"] if dry else []
    runs = {"glue_fp32": ("glue", []), "glue_bf16": ("glue", ["--mixed_precision", "bf16"]),
            "glue_bf16_compiled": ("glue", ["--mixed_precision", "bf16", "--torch_compile", *compile_backend]),
            "trainer_bf16": ("glue_trainer", ["--mixed_precision", "bf16"])}
    if not dry:
        for name, config in (("glue_fsdp1", "fsdp.yaml"), ("glue_fsdp2", "fsdp2.yaml")):
            runs[name] = ("accelerate:" + config, ["--mixed_precision", "bf16"])
    out: dict[str, Any] = {}
    for name, (recipe, extra) in runs.items():
        folder = os.path.join(work, name)
        argv = recipe_args(model, data, folder, dry) + extra
        started = time.perf_counter()
        try:
            if recipe.startswith("accelerate:"):
                config = os.path.join(ROOT, "recipes", "accelerate_configs", recipe.split(":", 1)[1])
                _launch([sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
                         "--num_processes", "1", "--main_process_port", str(_free_port()),
                         os.path.join(ROOT, "recipes", "glue.py"), *argv], timeout=600)
            elif dry:
                _in_process(recipe, argv)
            else:
                _launch([sys.executable, os.path.join(ROOT, "recipes", f"{recipe}.py"), *argv], timeout=600)
            out[name] = {**_summary_of(os.path.join(folder, "results.json")),
                         "wall_s": round(time.perf_counter() - started, 1)}
        except Exception as err:  # recorded; the check goes on
            out[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
        print(f"recipes/{name}: {out[name]}", flush=True)
    started = time.perf_counter()
    try:  # the library path under FSDP1/FSDP2 (one process), checked against the unwrapped run in the tests
        _launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
                 str(_free_port()), os.path.join(ROOT, "tests", "wrapped_run.py"), work, "fsdp1", "fsdp2"], 600)
        out["library_fsdp1_fsdp2"] = {"ok": True, "wall_s": round(time.perf_counter() - started, 1)}
    except Exception as err:
        out["library_fsdp1_fsdp2"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    print(f"recipes/library_fsdp1_fsdp2: {out['library_fsdp1_fsdp2']}", flush=True)
    return out


# ------------------------------------------------------------------------------------------------------ anatomy
def anatomy(model_dir: str, data: str, device: torch.device, steps: int) -> dict[str, Any]:
    """Median milliseconds of each phase of a raw layer-wise training step, MRPC batches of 32."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hf_layerwise.glue import get_task, load_glue
    from hf_layerwise.glue.features import tokenize_glue

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    examples = tokenize_glue(load_glue("mrpc", data_dir=data), tokenizer, get_task("mrpc"), 128)["train"]
    examples = [examples[i] for i in range(min(len(examples), 32 * (steps + 5)))]
    for e in examples:
        e.pop("idx", None)
    collate = DataCollatorWithPadding(tokenizer)
    result = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2).to(device)
        optimizer = create_optimizer(model, LayerwiseConfig.preset("top3x5", top_k=min(3, model.config.num_hidden_layers)),
                                     lr=1e-4, fused=True if device.type == "cuda" else None)
        phases: dict[str, list[float]] = {k: [] for k in ("collate", "forward", "backward", "clip", "optimizer")}
        for step in range(steps + 5):
            rows = [examples[(step * 32 + j) % len(examples)] for j in range(32)]
            t0 = time.perf_counter()
            batch = {k: v.to(device, non_blocking=True) for k, v in collate(rows).items()}
            collate_ms = 1000 * (time.perf_counter() - t0)
            marks = [torch.cuda.Event(enable_timing=True) for _ in range(5)] if device.type == "cuda" else None
            stamps = []

            def mark(i: int) -> None:
                if marks is not None:
                    marks[i].record()
                else:
                    stamps.append(time.perf_counter())

            mark(0)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = model(**batch).loss
            mark(1)
            loss.backward()
            mark(2)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            mark(3)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            mark(4)
            _sync(device)
            if step < 5:
                continue  # warm-up: first kernels, allocator
            spans = ([marks[i].elapsed_time(marks[i + 1]) for i in range(4)] if marks is not None
                     else [1000 * (stamps[i + 1] - stamps[i]) for i in range(4)])
            for key, value in zip(("collate", "forward", "backward", "clip", "optimizer"), [collate_ms, *spans]):
                phases[key].append(value)
        result[precision] = {k: round(statistics.median(v), 3) for k, v in phases.items()}
        result[precision]["step"] = round(sum(result[precision].values()), 3)
        print(f"anatomy/{precision} (ms): {result[precision]}", flush=True)
    return result


# ------------------------------------------------------------------------------------------------------- ratios
def interleaved(a: Callable[[], None], b: Callable[[], None], steps: int, device: torch.device,
                max_rounds: int = 12, tolerance: float = 0.02) -> dict[str, Any]:
    """Time ``steps`` calls of ``a`` then of ``b``, round after round, until three consecutive rounds' ratios a/b
    agree within ``tolerance`` (or ``max_rounds``); the ratio is the median of those three."""
    for _ in range(3):  # warm-up
        a(), b()
    ratios: list[float] = []
    for _ in range(max_rounds):
        times = []
        for fn in (a, b):
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / times[1])
        last = ratios[-3:]
        if len(last) == 3 and max(last) / min(last) - 1 <= tolerance:
            break
    last = ratios[-3:]
    return {"ratio": round(statistics.median(last), 4), "agree": len(last) == 3 and max(last) / min(last) - 1
            <= tolerance, "rounds": [round(r, 4) for r in ratios]}


def _step_fn(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict, device: torch.device,
             bf16: bool) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def ratios(device: torch.device, dry: bool) -> dict[str, Any]:
    import plugin_overhead
    import transformers as T

    config = TINY if dry else BERT_BASE
    # the dry run only exercises the code: fp32 (bf16 matmuls are slow on CPUs), small batches, at most 4 rounds
    steps, bf16, rows, length, rounds = (2, False, 8, 32, 4) if dry else (20, True, 32, 128, 12)
    fused = True if device.type == "cuda" else None

    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return T.BertForSequenceClassification(T.BertConfig(**config)).to(device)

    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, config["vocab_size"], (rows, length), generator=g).to(device),
             "labels": torch.randint(0, 2, (rows,), generator=g).to(device)}
    out: dict[str, Any] = {}
    many, two = fresh(), fresh()
    opt_many = create_optimizer(many, LayerwiseConfig(top_k=3, top_lr_multiplier=5.0, layer_decay=0.9), 1e-4,
                                fused=fused)
    opt_two = create_optimizer(two, LayerwiseConfig.preset("baseline"), 1e-4, fused=fused)
    out["groups_layerwise_vs_2"] = {"groups": [len(opt_many.param_groups), len(opt_two.param_groups)],
                                    **interleaved(_step_fn(many, opt_many, batch, device, bf16),
                                                  _step_fn(two, opt_two, batch, device, bf16), steps, device,
                                                  max_rounds=rounds)}
    print(f"ratios/groups: {out['groups_layerwise_vs_2']}", flush=True)
    preset, by_hand = fresh(), fresh()
    opt_preset = create_optimizer(preset, LayerwiseConfig.preset("top3x5-freeze"), 1e-4, fused=fused)
    frozen = {id(p) for p in preset.parameters() if not p.requires_grad}
    for (_, p), (_, q) in zip(preset.named_parameters(), by_hand.named_parameters()):
        q.requires_grad_(id(p) not in frozen)
    trainable = [(n, p) for n, p in by_hand.named_parameters() if p.requires_grad]
    opt_hand = torch.optim.AdamW([{"params": [p for n, p in trainable if "bias" not in n and "LayerNorm" not in n],
                                   "weight_decay": 0.01},
                                  {"params": [p for n, p in trainable if "bias" in n or "LayerNorm" in n],
                                   "weight_decay": 0.0}], lr=1e-4, fused=fused)
    out["preset_freeze_vs_hand"] = interleaved(_step_fn(preset, opt_preset, batch, device, bf16),
                                               _step_fn(by_hand, opt_hand, batch, device, bf16), steps, device,
                                               max_rounds=rounds)
    print(f"ratios/freeze: {out['preset_freeze_vs_hand']}", flush=True)
    trainer_ratios = []
    cuda = device.type == "cuda"
    for _ in range(3 if dry else 5):  # whole Trainer runs (setup excluded by the step clock), interleaved
        ours = plugin_overhead.run(True, 13 if dry else 60, config=config, cuda=cuda, bf16=bf16, batch=rows)
        plain = plugin_overhead.run(False, 13 if dry else 60, config=config, cuda=cuda, bf16=bf16, batch=rows)
        trainer_ratios.append(ours / plain)
    last = trainer_ratios[-3:]
    out["layerwise_trainer_vs_trainer"] = {"ratio": round(statistics.median(last), 4),
                                           "agree": max(last) / min(last) - 1 <= 0.02,
                                           "rounds": [round(r, 4) for r in trainer_ratios]}
    print(f"ratios/trainer: {out['layerwise_trainer_vs_trainer']}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------------- main
def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The GPU targets of the issue, read off the measurements (None where a figure is missing)."""
    rec, rat = summary.get("recipes", {}), summary.get("ratios", {})

    def sps(name: str) -> float | None:
        return rec.get(name, {}).get("train_samples_per_second")

    bf16, fp32, compiled = sps("glue_bf16"), sps("glue_fp32"), sps("glue_bf16_compiled")
    return {
        "bf16_at_least_fp32": None if not (bf16 and fp32) else bf16 >= fp32,
        "recipe_at_least_2x_806_samples_per_s": None if not compiled else max(compiled, bf16 or 0) >= 2 * 806,
        "overheads_at_most_1.02": None if not rat else all(
            v.get("ratio", 9) <= 1.02 for v in rat.values() if isinstance(v, dict)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model and data, under two minutes")
    parser.add_argument("--model_dir", help="MiniLM model folder (GPU run)")
    parser.add_argument("--data_dir", help="GLUE folder with MRPC/ (GPU run)")
    parser.add_argument("--out", help="work folder (default: a temporary one)")
    parser.add_argument("--sections", default="recipes,anatomy,ratios")
    args = parser.parse_args()
    if not args.dry_run and not (args.model_dir and args.data_dir):
        parser.error("pass --model_dir and --data_dir, or --dry-run")
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: this is the GPU check (use --dry-run on the CPU)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.dry_run:
        torch.set_num_threads(1)
    device = torch.device("cuda" if not args.dry_run else "cpu")
    work = args.out or tempfile.mkdtemp(prefix="gpu_check-")
    os.makedirs(work, exist_ok=True)
    started = time.perf_counter()
    import accelerate
    import transformers

    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "accelerate": accelerate.__version__, "cuda": torch.version.cuda},
    }
    model, data = prepare_inputs(args, work)
    sections = {"recipes": lambda: recipes(model, data, work, args.dry_run),
                "anatomy": lambda: anatomy(model, data, device, 3 if args.dry_run else 50),
                "ratios": lambda: ratios(device, args.dry_run)}
    for name in args.sections.split(","):
        try:
            summary[name] = sections[name]()
        except Exception:  # recorded; the other sections still run
            summary[name] = {"error": traceback.format_exc(limit=3)[-800:]}
    summary["targets"] = targets(summary) if not args.dry_run else {
        "note": "dry run on the CPU: code paths only, the GPU targets are not measured"}
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
