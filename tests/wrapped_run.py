"""Train a tiny BERT with preset top3x5-freeze under a wrapper, through the library alone (no accelerate, which
refuses FSDP without a GPU): used by tests/test_wrapped_models.py. With ``WRAPPED_MODEL=lora-llama``: a tiny Llama with
PEFT LoRA adapters (r=4 on q/v, score head whole), adapters of block 1 frozen, top 2 blocks at 5x, LoRA+ ratio 4.

    python tests/wrapped_run.py OUT none ckpt compile                    # one process, in turn
    torchrun --nproc_per_node 2 tests/wrapped_run.py OUT ddp fsdp1 fsdp2   # 2 CPU processes (gloo), in turn

The global batch is 8 rows of fixed random data, split over the processes; dropout is off, so every wrapper must give
the unwrapped run's weights. Writes OUT/<wrapper>.pt on the main process: the full weights (canonical names), per step
the per-depth gradient norms and learning rates, the health monitor's records, and what the optimizer holds state for.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import sys
import warnings

faulthandler.enable(all_threads=True)  # a crash in C++ (SIGABRT, SIGSEGV) prints every thread's Python stack
# FSDP1 warns for every block that holds frozen and trainable weights: by design here (LoRA, frozen halves); keep the
# output short enough that a failure's tail shows what failed
warnings.filterwarnings("ignore", message=".*has both parameters with requires_grad=True and False")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from conftest import tiny_lora, tiny_model  # noqa: E402

from hf_layerwise import (DepthGradNorms, HealthConfig, HealthMonitor, LayerwiseConfig, create_optimizer,  # noqa: E402
                          discover_layers, lr_by_depth, set_stage)
from hf_layerwise.layers import strip_wrappers  # noqa: E402

STEPS, GLOBAL_BATCH, LR = 6, 8, 1e-3
LORA = os.environ.get("WRAPPED_MODEL", "bert") == "lora-llama"
CFG = (LayerwiseConfig(top_k=2, top_lr_multiplier=5.0, freeze_below=1, loraplus_ratio=4.0) if LORA
       else LayerwiseConfig.preset("top3x5-freeze", top_k=2))  # 4 blocks: embeddings and blocks 1-2 frozen, 3-4 at 5x


def _model() -> torch.nn.Module:
    if LORA:
        return tiny_lora("llama")  # attention_dropout 0 (Llama's default), lora_dropout 0
    return tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _wrap(model: torch.nn.Module, how: str) -> torch.nn.Module:
    blocks = discover_layers(model).blocks(model)
    block_type = type(blocks[0])

    if how == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model)
    if how == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FullyShardedDataParallel(model, use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy({block_type}),
                                        device_id=torch.device("cpu"))
    if how == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        return fully_shard(model)
    if how == "ckpt":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, block_type))
        return model
    if how == "compile":
        return torch.compile(model, backend="eager")
    return model


def _full_weights(model: torch.nn.Module, how: str) -> dict[str, torch.Tensor]:
    if how == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model):
            return {strip_wrappers(n): p.detach().clone() for n, p in model.named_parameters()}
    return {strip_wrappers(n): (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
            for n, p in model.named_parameters()}


def train(how: str, out: str) -> None:
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    model = _model()
    set_stage(model, CFG, discover_layers(model), stage=0)  # freeze before wrapping, as accelerate's prepare does
    model = _wrap(model, how)
    layers = discover_layers(model)  # the wrapped model's map: canonical names, the same depths
    optimizer = create_optimizer(model, CFG, lr=LR, layers=layers)
    norms = DepthGradNorms(model, layers)
    monitor = HealthMonitor(model, HealthConfig(every_n_steps=2, histograms=False), layers=layers,
                            run_dir=os.path.join(out, how) if rank == 0 else None, is_main_process=rank == 0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 96, (STEPS, GLOBAL_BATCH, 12), generator=g)
    labels = (ids[:, :, 1] % 2).long()
    share = GLOBAL_BATCH // world
    record = {"norms": [], "lrs": [], "health": []}
    for step in range(STEPS):
        rows = slice(rank * share, (rank + 1) * share)
        monitor.begin(step + 1, grad_hooks=False)
        loss = model(input_ids=ids[step, rows], labels=labels[step, rows]).loss
        loss.backward()
        per_depth = norms()
        if how == "fsdp1":
            model.clip_grad_norm_(1.0)
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        monitor.before_optimizer_step()
        record["lrs"].append(lr_by_depth(optimizer))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record["norms"].append(per_depth)
        health = monitor.end(optimizer, loss.detach(), grad_norms=per_depth)
        if health:
            record["health"].append(health)
    monitor.close()
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    frozen_names = [n for n, p in model.named_parameters() if not p.requires_grad]
    record["state_for_frozen"] = sum(1 for p in optimizer.state if id(p) not in trainable)
    record["state_for_trainable"] = sum(1 for p in optimizer.state if id(p) in trainable)
    record["frozen"] = sorted(strip_wrappers(n) for n in frozen_names)
    record["groups"] = [(grp["name"], grp["lr_scale"]) for grp in optimizer.param_groups]
    weights = _full_weights(model, how)
    if rank == 0:
        torch.save({**record, "weights": weights}, os.path.join(out, f"{how}.pt"))


def main() -> None:
    out, modes = sys.argv[1], sys.argv[2:]
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    for how in modes:
        train(how, out)
        gc.collect()  # free this wrapper's hooks and sharded tensors while the process group still exists
        print(f"rank {os.environ.get('RANK', 0)}: {how} done", file=sys.stderr, flush=True)
    if dist.is_initialized():
        dist.barrier()  # no rank tears down its group while another still uses it
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
