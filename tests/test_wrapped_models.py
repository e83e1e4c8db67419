"""The layer map and everything built on it (groups, no-decay, freezing, per-depth norms and LRs, the health monitor)
on wrapped models: DDP, FSDP1 (use_orig_params=True) and FSDP2 on 2 CPU processes (gloo), activation checkpointing and
torch.compile in one process. Each trains preset top3x5-freeze (bottom half frozen) and must end where the unwrapped
run ends (dropout off: 1 and N processes draw different dropout masks). The same on a tiny Llama with PEFT LoRA adapters
(layer-wise rates, LoRA+, block 1's adapters frozen) under DDP, FSDP1 and FSDP2."""

import os
import re
import socket
import subprocess
import sys
import warnings

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import wrapped_run  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(HERE)}


def _torchrun(out, env: dict[str, str]) -> None:
    """wrapped_run.py under DDP, FSDP1 and FSDP2 on 2 gloo processes. One rerun if the first process to fail was
    killed by a signal (seen once in CI on a loaded 2-core machine: rank 1 aborted inside torch with "terminate called
    without an active exception"; not reproduced in 26 runs under load here); the rerun is reported as a warning with
    the first try's output. A Python error (exit code 1), a hang or a second crash fails."""
    for attempt in (1, 2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                               str(port), os.path.join(HERE, "wrapped_run.py"), str(out), "ddp", "fsdp1", "fsdp2"],
                              env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode == 0 or attempt == 2 or not _killed_by_a_signal(proc.stderr):
            break
        warnings.warn(f"a torchrun worker was killed by a signal; rerunning once. Its output:\n{proc.stderr[-3000:]}")
    assert proc.returncode == 0, proc.stderr[-4000:]


def _killed_by_a_signal(stderr: str) -> bool:
    """Whether torchrun's report names a negative exit code (a signal) for the first worker that failed."""
    found = re.search(r"Root Cause \(first observed failure\):.*?exitcode\s*:\s*(-?\d+)", stderr, re.S)
    return bool(found) and int(found.group(1)) < 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("wrapped")
    for how in ("none", "ckpt", "compile"):
        wrapped_run.train(how, str(out))
    _torchrun(out, ENV)
    return {how: torch.load(out / f"{how}.pt") for how in ("none", "ckpt", "compile", "ddp", "fsdp1", "fsdp2")}


def test_reference_run_freezes_and_boosts_as_configured(runs):
    ref = runs["none"]
    assert all(n.startswith(("bert.embeddings.", "bert.encoder.layer.0.", "bert.encoder.layer.1."))
               for n in ref["frozen"]) and len(ref["frozen"]) == 5 + 2 * 16
    assert ref["groups"] == [("depth3-4.decay", 5.0), ("depth3-4.no_decay", 5.0), ("depth5.decay", 1.0),
                             ("depth5.no_decay", 1.0)]
    assert ref["lrs"][0] == {3: 5 * wrapped_run.LR, 4: 5 * wrapped_run.LR, 5: wrapped_run.LR}


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ckpt", "compile", "ddp", "fsdp1", "fsdp2"])
def test_wrapped_training_matches_the_unwrapped_run(runs, how):
    ref, run = runs["none"], runs[how]
    tolerance = 1e-6 if how in ("ckpt", "compile") else 1e-5  # 2 processes sum in another order
    assert run["weights"].keys() == ref["weights"].keys()  # canonical names: no wrapper prefixes
    assert max((run["weights"][k] - ref["weights"][k]).abs().max().item() for k in ref["weights"]) <= tolerance
    assert run["frozen"] == ref["frozen"] and run["groups"] == ref["groups"]
    assert run["lrs"] == ref["lrs"]  # every group's LR at every step
    assert run["state_for_frozen"] == 0 and run["state_for_trainable"] > 0  # no optimizer state for frozen weights
    for got, want in zip(run["norms"], ref["norms"]):  # per-depth pre-clip norms of the full gradients
        assert got.keys() == want.keys() == {3, 4, 5}
        assert all(got[d] == pytest.approx(want[d], rel=1e-4) for d in want)
    assert len(run["health"]) == len(ref["health"]) == 3
    for got, want in zip(run["health"], ref["health"]):  # the monitor's figures of the full tensors
        # a compiled graph skips forward hooks added after compiling: no dead-unit fractions there (documented)
        assert got.keys() == {k for k in want if not (how == "compile" and k.startswith("health/dead_units"))}
        for key in want:
            if key.startswith(("health/weight_norm", "health/update_ratio", "health/grad_norm", "health/near_zero")):
                assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-9), key


def test_a_map_built_before_wrapping_serves_the_wrapped_model():
    """The FSDP1 crash of the GPU check: the map was built on the inner model and looked up with wrapped names."""
    from conftest import tiny_model

    from hf_layerwise import DepthGradNorms, LayerwiseConfig, discover_layers, layer_map, param_groups

    model = tiny_model("bert")
    layers = discover_layers(model)
    compiled = torch.compile(model, backend="eager")  # parameter names gain `_orig_mod.`
    cfg = LayerwiseConfig.preset("top3x5", top_k=2)
    assert [g["name"] for g in param_groups(compiled, cfg, 1e-3, layers=layers)] == \
        [g["name"] for g in param_groups(model, cfg, 1e-3)]
    assert layers.depth_of("module._fsdp_wrapped_module.bert.encoder.layer.2._checkpoint_wrapped_module."
                           "output.dense.weight") == 3
    assert layer_map(compiled)["_orig_mod.classifier.bias"] == 5  # the public map keeps the names it was given
    compiled(input_ids=torch.randint(5, 90, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
    assert sorted(DepthGradNorms(compiled, layers)()) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(KeyError, match="not in this layer map"):
        layers.depth_of("encoder.something_else.weight")


class _Engine:
    """An engine's optimizer wrapper (AcceleratedOptimizer -> DeepSpeed ZeRO optimizer -> torch optimizer)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups


def test_param_group_mismatch_reads_the_optimizer_the_engine_steps():
    from conftest import tiny_model

    from hf_layerwise import LayerwiseConfig, create_optimizer
    from hf_layerwise.optimizer import param_group_mismatch

    model, cfg = tiny_model("bert"), LayerwiseConfig.preset("top3x5", top_k=2)
    optimizer = create_optimizer(model, cfg, lr=1e-3)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0)  # warmup starts at LR 0: initial_lr counts
    assert param_group_mismatch(_Engine(_Engine(optimizer)), model, cfg, 1e-3) is None
    merged = torch.optim.AdamW([{"params": [p for g in optimizer.param_groups for p in g["params"]], "lr": 1e-3}])
    assert "holds 1 group(s) [None], the layer-wise config asks for 4" in param_group_mismatch(
        _Engine(merged), model, cfg, 1e-3)
    for group in optimizer.param_groups:  # an engine that kept the groups but not their learning rates
        group["initial_lr"] = 1e-3
    assert "steps other learning rates: depth3-4.decay 0.001 (asked 0.005)" in param_group_mismatch(
        _Engine(optimizer), model, cfg, 1e-3)


def test_deepspeed_clipping_must_match_the_config():
    from types import SimpleNamespace

    from conftest import tiny_model

    from hf_layerwise import LayerwiseConfig, check_training_setup, discover_layers

    model = tiny_model("bert")
    layers = discover_layers(model)
    state = SimpleNamespace(fsdp_plugin=None, deepspeed_plugin=SimpleNamespace(gradient_clipping=1.0))
    check_training_setup(model, LayerwiseConfig(), layers, state)  # max_grad_norm 1.0: the same
    with pytest.raises(ValueError, match="clips gradients at 0.5 .* asks for max_grad_norm=1.0"):
        check_training_setup(model, LayerwiseConfig(), layers,
                             SimpleNamespace(fsdp_plugin=None, deepspeed_plugin=SimpleNamespace(gradient_clipping=0.5)))
    with pytest.raises(ValueError, match="Gradual unfreezing"):
        check_training_setup(model, LayerwiseConfig(unfreeze_every=1), layers, state)


@pytest.mark.parametrize("layout", ["fsdp", "deepspeed"])
def test_sharded_checkpoint_layouts_are_recognised(tmp_path, layout):
    import json

    from hf_layerwise.glue.run_dir import checkpoint_problem

    folder = tmp_path / "step_4"
    shard = folder / ("pytorch_model_fsdp_0" if layout == "fsdp" else "pytorch_model")
    shard.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, shard / ("__0_0.pt" if layout == "fsdp" else "mp_rank_00_model_states.pt"))
    if layout == "fsdp":
        (folder / "optimizer_0").mkdir()
        torch.save({"state": {}}, folder / "optimizer_0" / "__0_0.pt")
    torch.save({"rng": 1}, folder / "random_states_0.pkl")
    (folder / "progress.json").write_text(json.dumps({"completed_steps": 4}))
    (folder / "run_config.json").write_text(json.dumps({"--learning_rate": 2e-5}))
    assert checkpoint_problem(str(folder)) is None
    with open(shard / next(p.name for p in shard.iterdir()), "r+b") as f:
        f.truncate(30)
    assert "is truncated or damaged" in checkpoint_problem(str(folder))


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    """The same runs on a tiny Llama with PEFT LoRA (wrapped_run.py with WRAPPED_MODEL=lora-llama)."""
    pytest.importorskip("peft")
    out = tmp_path_factory.mktemp("wrapped_lora")
    env = {**ENV, "WRAPPED_MODEL": "lora-llama"}
    one = subprocess.Popen([sys.executable, os.path.join(HERE, "wrapped_run.py"), str(out), "none"], env=env,
                           stderr=subprocess.PIPE, text=True)
    _torchrun(out, env)
    _, err = one.communicate(timeout=600)
    assert one.returncode == 0, err[-4000:]
    return {how: torch.load(out / f"{how}.pt") for how in ("none", "ddp", "fsdp1", "fsdp2")}


@pytest.mark.parametrize("how", ["ddp", "fsdp1", "fsdp2"])
def test_lora_on_a_decoder_under_ddp_and_fsdp_matches_one_process(lora_runs, how):
    """LoRA adapters with layer-wise rates and LoRA+ on 2 gloo processes end where one process ends; the base weights
    and block 1's adapters hold no optimizer state."""
    ref, run = lora_runs["none"], lora_runs[how]
    assert ref["groups"] == [("depth2,5.decay", 1.0), ("depth2.decay.lora_B", 4.0), ("depth3-4.decay", 5.0),
                             ("depth3-4.decay.lora_B", 20.0)]
    assert ref["lrs"][0] == {2: wrapped_run.LR, 3: 5 * wrapped_run.LR, 4: 5 * wrapped_run.LR, 5: wrapped_run.LR}
    assert any(".layers.0.self_attn.q_proj.lora_A." in n for n in ref["frozen"])  # block 1's adapters frozen
    assert run["weights"].keys() == ref["weights"].keys()
    assert max((run["weights"][k] - ref["weights"][k]).abs().max().item() for k in ref["weights"]) <= 1e-5
    assert run["frozen"] == ref["frozen"] and run["groups"] == ref["groups"] and run["lrs"] == ref["lrs"]
    assert run["state_for_frozen"] == 0 and run["state_for_trainable"] > 0
    for got, want in zip(run["norms"], ref["norms"]):
        assert got.keys() == want.keys() == {2, 3, 4, 5}
        assert all(got[d] == pytest.approx(want[d], rel=1e-4) for d in want)
