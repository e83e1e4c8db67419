"""The frozen-feature cache: forwards from cached states equal the full forward (logits and gradients, dropout off),
with dynamic padding; the store's RAM/disk split; the refusals (nothing frozen, trainable below the cut, changed
inputs, models whose blocks need more than the states)."""

import random

import datasets
import pytest
import torch
from conftest import tiny_model

from hf_layerwise import LayerwiseConfig, discover_layers, set_stage
from hf_layerwise.feature_cache import (CACHE_ROW, CacheMismatchError, FeatureStore, FrozenFeatureCache,
                                        add_cache_rows)
from hf_layerwise.layers import UnsupportedModelError


def token_data(n: int, seed: int = 0, min_len: int = 3, max_len: int = 20) -> datasets.Dataset:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        rows.append({"input_ids": [rng.randint(3, 95) for _ in range(length)], "attention_mask": [1] * length,
                     "labels": rng.randint(0, 1)})
    return datasets.Dataset.from_list(rows)


def collate(examples: list[dict], multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right padding with id 1 (RoBERTa's pad id; any id works for the others), to a multiple like the recipes."""
    longest = max(len(e["input_ids"]) for e in examples)
    longest = -(-longest // multiple) * multiple
    batch = {"input_ids": torch.ones(len(examples), longest, dtype=torch.long),
             "attention_mask": torch.zeros(len(examples), longest, dtype=torch.long),
             "labels": torch.tensor([e["labels"] for e in examples])}
    for i, e in enumerate(examples):
        batch["input_ids"][i, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        batch["attention_mask"][i, :len(e["input_ids"])] = 1
    if CACHE_ROW in examples[0]:
        batch[CACHE_ROW] = torch.tensor([e[CACHE_ROW] for e in examples])
    return batch


def frozen_model(arch: str, cut: int = 2, **overrides):
    model = tiny_model(arch, **overrides)
    layers = discover_layers(model)
    set_stage(model, LayerwiseConfig(freeze_below=cut, top_k=0), layers, 0)
    return model, layers


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet", "deberta-v2", "modernbert", "minilm"])
def test_cached_forward_equals_the_full_forward(arch):
    model, layers = frozen_model(arch)
    splits = add_cache_rows({"train": token_data(20), "validation": token_data(12, seed=1)})
    cache = FrozenFeatureCache(model, cut=2, layers=layers, dtype="float32")
    rng_before = torch.get_rng_state()
    cache.build(splits.values(), collate_fn=collate, batch_size=8)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the pre-pass draws no random numbers
    assert cache.stats()["examples"] == 32
    model.eval()  # dropout off in both paths
    for split, ds in splits.items():
        for start, multiple in ((0, 1), (5, 8)):  # dynamic padding and padding to a multiple
            batch = collate([ds[i] for i in range(start, start + 6)], multiple)
            model.zero_grad()
            plain = model(**{k: v for k, v in batch.items() if k != CACHE_ROW})
            plain.loss.backward()
            want = grads(model)
            model.zero_grad()
            with cache.use(batch) as inputs:
                cached = model(**inputs)
            cached.loss.backward()
            got = grads(model)
            assert torch.allclose(cached.logits, plain.logits, atol=1e-5, rtol=1e-5)
            assert got.keys() == want.keys() and want  # the same trainable parameters get gradients
            assert all(layers.depth_of(n) > 2 for n in got)
            assert max((got[n] - want[n]).abs().max().item() for n in want) < 1e-5
    cache.close()
    assert all("forward" not in vars(block) for block in layers.blocks(model))  # the blocks compute again
    again = model(**{k: v for k, v in batch.items() if k != CACHE_ROW}).logits
    assert torch.equal(again, plain.logits)


def test_float16_cache_stays_close_and_blocks_really_skip():
    model, layers = frozen_model("bert")
    splits = add_cache_rows({"train": token_data(16)})
    cache = FrozenFeatureCache(model, cut=2, layers=layers)  # float16 by default
    cache.build(splits.values(), collate_fn=collate, batch_size=16)
    model.eval()
    batch = collate([splits["train"][i] for i in range(8)])
    plain = model(**{k: v for k, v in batch.items() if k != CACHE_ROW}).logits
    calls = []
    hooks = [b.register_forward_pre_hook(lambda m, a: calls.append(m)) for b in layers.blocks(model)]
    frozen_linear = layers.blocks(model)[0].attention.self.query
    hooks.append(frozen_linear.register_forward_hook(lambda m, a, o: calls.append("inner")))
    with cache.use(batch) as inputs:
        cached = model(**inputs).logits
    for h in hooks:
        h.remove()
    assert "inner" not in calls  # the frozen blocks did not compute
    assert torch.allclose(cached, plain, atol=5e-3)
    assert cache.stats()["dtype"] == "float16" and cache.stats()["frozen_dropout"] is False


def test_store_spills_beyond_its_memory_budget(tmp_path):
    lengths = torch.tensor([3, 5, 2, 4])
    width = 4  # 8 bytes a token in float16: a budget of 70 bytes holds the first two rows (8 tokens = 64 bytes)
    store = FeatureStore(lengths, width, torch.float16, max_memory_bytes=70, spill_path=str(tmp_path / "c.bin"))
    assert store.split_row == 2 and store.memory_bytes == 8 * 8 + 14 * 4 and store.disk_bytes == 6 * 8
    rows = {r: torch.randn(int(n), width) for r, n in enumerate(lengths)}
    for r, states in rows.items():
        store.put(r, states, torch.arange(int(lengths[r])) + 3)
    ids = torch.tensor([[3, 4, 5, 6, 7], [3, 4, 0, 0, 0], [3, 4, 5, 6, 0]])
    mask = (ids > 0).long()
    out = store.gather([1, 2, 3], ids, mask)
    assert out.shape == (3, 5, width) and out.dtype == torch.float16
    for i, r in enumerate([1, 2, 3]):
        n = int(lengths[r])
        assert torch.equal(out[i, :n], rows[r].half()) and not out[i, n:].any()
    assert (tmp_path / "c.bin").stat().st_size == 6 * 8
    store.close()
    assert not (tmp_path / "c.bin").exists()
    with pytest.raises(ValueError, match="no spill_dir"):
        FeatureStore(lengths, width, torch.float16, max_memory_bytes=70)


def test_spilled_cache_gives_the_same_forward(tmp_path):
    model, layers = frozen_model("bert")
    splits = add_cache_rows({"train": token_data(24)})
    in_ram = FrozenFeatureCache(model, cut=2, layers=layers, dtype="float32")
    in_ram.build(splits.values(), collate_fn=collate, batch_size=8)
    batch = collate([splits["train"][i] for i in (0, 9, 23, 17)])
    model.eval()
    with in_ram.use(batch) as inputs:
        want = model(**inputs).logits
    in_ram.close()
    spilled = FrozenFeatureCache(model, cut=2, layers=layers, dtype="float32", max_memory_gb=1e-6,
                                 spill_dir=str(tmp_path))
    spilled.build(splits.values(), collate_fn=collate, batch_size=8)
    assert spilled.stats()["disk_bytes"] > 0 and (tmp_path / "feature_cache-rank0.bin").exists()
    with spilled.use(batch) as inputs:
        assert torch.equal(model(**inputs).logits, want)
    spilled.close()
    assert not (tmp_path / "feature_cache-rank0.bin").exists()


def test_refusals():
    model, layers = frozen_model("bert", cut=0)
    with pytest.raises(ValueError, match="needs frozen encoder blocks: cut=0, the model has 4 blocks"):
        FrozenFeatureCache(model, cut=0, layers=layers)
    with pytest.raises(CacheMismatchError, match="at or below the cached block 2 are trainable"):
        FrozenFeatureCache(model, cut=2, layers=layers)  # nothing frozen
    model, layers = frozen_model("bert")
    with pytest.raises(ValueError, match="cache dtype 'int8'"):
        FrozenFeatureCache(model, cut=2, layers=layers, dtype="int8")
    splits = add_cache_rows({"train": token_data(8)})
    cache = FrozenFeatureCache(model, cut=2, layers=layers)
    cache.build(splits.values(), collate_fn=collate)
    batch = collate([splits["train"][i] for i in range(4)])
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][2, 0] = 95 if int(changed["input_ids"][2, 0]) != 95 else 94  # an augmented example
    with pytest.raises(CacheMismatchError, match=r"example\(s\) \[2\] differ from what was cached"):
        with cache.use(changed):
            pass
    with pytest.raises(CacheMismatchError, match="without a 'cache_row' column"):
        with cache.use({k: v for k, v in batch.items() if k != CACHE_ROW}):
            pass
    layers.blocks(model)[1].output.dense.weight.requires_grad_(True)  # something below the cut trains again
    with pytest.raises(CacheMismatchError, match="encoder.layer.1.output.dense.weight"):
        with cache.use(batch):
            pass


def test_models_that_read_the_frozen_blocks_outputs_are_refused():
    """A model whose output mixes every block's output (here: the encoder returns their mean, as layer-pooling heads
    do) cannot start from the cut: the pre-pass check sees the difference and refuses."""
    from types import SimpleNamespace

    model, layers = frozen_model("bert")
    encoder = model.bert.encoder

    def mean_of_blocks(hidden_states, attention_mask=None, **kwargs):
        outputs = []
        for block in encoder.layer:
            hidden_states = block(hidden_states, attention_mask)
            outputs.append(hidden_states)
        return SimpleNamespace(last_hidden_state=torch.stack(outputs).mean(0), cache=None)

    encoder.forward = mean_of_blocks
    cache = FrozenFeatureCache(model, cut=2, layers=layers)
    with pytest.raises(UnsupportedModelError, match="differs from the full forward"):
        cache.build(add_cache_rows({"train": token_data(8)}).values(), collate_fn=collate)
    assert "forward" not in vars(layers.blocks(model)[0])  # the blocks got their own forward back


@pytest.mark.parametrize("cut", [1, 3])
def test_deberta_v2_with_its_convolution_after_block_1(cut):
    """DeBERTa-v2 mixes a convolution of the embeddings into block 1's output; the embeddings still run in the
    cached forward, so the result is the same whether the cut is at block 1 or above it."""
    model, layers = frozen_model("deberta-v2", cut=cut, conv_kernel_size=3)
    splits = add_cache_rows({"train": token_data(12)})
    cache = FrozenFeatureCache(model, cut=cut, layers=layers, dtype="float32")
    cache.build(splits.values(), collate_fn=collate, batch_size=4)
    model.eval()
    batch = collate([splits["train"][i] for i in range(6)])
    plain = model(**{k: v for k, v in batch.items() if k != CACHE_ROW}).logits
    with cache.use(batch) as inputs:
        assert torch.allclose(model(**inputs).logits, plain, atol=1e-5)
