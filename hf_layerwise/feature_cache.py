"""Frozen-feature cache: run the frozen bottom of the encoder once per example, then train from its output.

With the embeddings and blocks ``1..c`` frozen (``c`` = the config's ``freeze_below``), their output for an example
never changes, provided they run without dropout. :class:`FrozenFeatureCache` runs them once per example in eval
mode (a pre-pass before training, the same for evaluation sets), keeps the output of block ``c`` for the real tokens
only, and afterwards every forward starts from those states: the frozen blocks return the cached states instead of
computing, so only blocks ``c+1..L`` and the head run (forward and backward). Dynamic padding stays: states are stored
unpadded and padded per batch.

What changes against the uncached run: the frozen blocks run without dropout (their dropout masks are gone; the
trainable blocks keep theirs), and the states are stored in ``dtype`` (float16 by default: about 3 decimal digits).

Where it applies: encoders whose blocks take the hidden states and the attention mask and nothing that changes
per block from the embeddings onwards. Tested: BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, MPNet. A pre-pass check
compares the cached and the full forward on the first batch and refuses a model where they differ (DeBERTa-v2 with
its convolution after block 1, say). Statically frozen blocks only: gradual unfreezing never opens a depth at or below
``freeze_below``, so it combines with the cache; anything trainable at or below the cut is refused at every batch.
The inputs must be the same every epoch (no augmentation or re-tokenisation): each batch's token ids are checked
against the cached example's.

Several processes (DDP): each process runs the pre-pass for its own contiguous shard of the examples, then the shards
are exchanged (over gloo, CPU tensors), so every process can serve any example the sampler gives it.

Memory: states of up to ``max_memory_gb`` are kept in RAM, the rest in a memory-mapped file in ``spill_dir`` (one per
process), deleted by :meth:`FrozenFeatureCache.close`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .layers import LayerMap, UnsupportedModelError, _unwrap, discover_layers

__all__ = ["FrozenFeatureCache", "FeatureStore", "CacheMismatchError", "add_cache_rows", "CACHE_ROW"]

logger = logging.getLogger(__name__)

CACHE_ROW = "cache_row"
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CacheMismatchError(RuntimeError):
    """A batch does not match the cached examples, or the model no longer fits the cache."""


def add_cache_rows(splits: Mapping[str, Any]) -> dict[str, Any]:
    """Give every example of every split a global row number (column ``cache_row``): the cache's key.

    ``splits`` maps names to ``datasets.Dataset`` objects; rows are numbered split after split in the given order.

    Example:
        >>> splits = add_cache_rows({"train": tokenized["train"], "validation": tokenized["validation"]})  # doctest: +SKIP
    """
    out, start = {}, 0
    for name, ds in splits.items():
        if CACHE_ROW in ds.column_names:
            ds = ds.remove_columns(CACHE_ROW)
        out[name] = ds.add_column(CACHE_ROW, list(range(start, start + len(ds))))
        start += len(ds)
    return out


class FeatureStore:
    """Unpadded per-example vectors (``[length, width]`` each) in one flat token array: RAM up to a budget, a
    memory-mapped file beyond it (split at an example boundary). The token ids are kept beside them for checks.

    Example:
        >>> store = FeatureStore(torch.tensor([3, 5]), width=4, dtype=torch.float16, max_memory_bytes=1 << 20)
        >>> store.put(1, torch.ones(5, 4), torch.arange(5))
        >>> store.gather([1], torch.arange(5)[None], torch.ones(1, 5, dtype=torch.long)).shape
        torch.Size([1, 5, 4])
    """

    def __init__(self, lengths: torch.Tensor, width: int, dtype: torch.dtype, max_memory_bytes: int,
                 spill_path: str | None = None) -> None:
        self.lengths = lengths.to(torch.int64)
        self.offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
        torch.cumsum(self.lengths, 0, out=self.offsets[1:])
        self.width, self.dtype = width, dtype
        bytes_per_token = width * torch.empty((), dtype=dtype).element_size()
        total = int(self.offsets[-1])
        fits = max_memory_bytes // bytes_per_token  # tokens that fit in RAM
        self.split_row = int(torch.searchsorted(self.offsets[1:], torch.tensor(fits), right=True))
        self.split_token = int(self.offsets[self.split_row])
        self.ram = torch.zeros(self.split_token, width, dtype=dtype)
        self.spill_path = None
        self.disk = torch.zeros(0, width, dtype=dtype)
        if total > self.split_token:
            if spill_path is None:
                raise ValueError(f"the cache needs {total * bytes_per_token / 2**30:.2f} GiB, more than its memory "
                                 f"budget of {max_memory_bytes / 2**30:.2f} GiB, and has no spill_dir for the rest: "
                                 "raise the budget or give a spill_dir")
            os.makedirs(os.path.dirname(os.path.abspath(spill_path)), exist_ok=True)
            raw = np.memmap(spill_path, dtype=np.uint8, mode="w+", shape=(total - self.split_token, bytes_per_token))
            self.disk = torch.from_numpy(raw).view(dtype)
            self.spill_path = spill_path
        self.token_ids = torch.zeros(total, dtype=torch.int32)

    @property
    def memory_bytes(self) -> int:
        return self.ram.numel() * self.ram.element_size() + self.token_ids.numel() * 4

    @property
    def disk_bytes(self) -> int:
        return self.disk.numel() * self.disk.element_size()

    def _span(self, row: int) -> tuple[torch.Tensor, int, int]:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        if row < self.split_row:
            return self.ram, start, end
        return self.disk, start - self.split_token, end - self.split_token

    def put(self, row: int, states: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Store the ``[length, width]`` states and the ids of example ``row``."""
        segment, start, end = self._span(row)
        if states.shape != (end - start, self.width):
            raise ValueError(f"row {row}: states of shape {tuple(states.shape)}, the store expects "
                             f"({end - start}, {self.width})")
        segment[start:end] = states.to(self.dtype)
        self.token_ids[int(self.offsets[row]):int(self.offsets[row + 1])] = token_ids

    def token_range(self, first_row: int, end_row: int) -> list[torch.Tensor]:
        """The stored tensors (states parts and ids) of rows ``first_row..end_row-1``, as contiguous views."""
        a, b = int(self.offsets[first_row]), int(self.offsets[end_row])
        parts = [self.token_ids[a:b]]
        s = self.split_token
        if a < s:
            parts.append(self.ram[a:min(b, s)])
        if b > s:
            parts.append(self.disk[max(a, s) - s:b - s])
        return parts

    def gather(self, rows: Sequence[int], input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The ``[B, T, width]`` states of ``rows`` padded to the batch's length ``T`` (zeros at padding), after
        checking that the batch holds the cached examples (same lengths, same token ids, right padding).

        Raises:
            CacheMismatchError: a row's inputs differ from those cached.
        """
        rows_t = torch.as_tensor(rows, dtype=torch.int64)
        lengths = self.lengths[rows_t]
        mask = attention_mask.detach().to("cpu", torch.bool)
        ids = input_ids.detach().cpu()
        expected = torch.cat([self.token_ids[int(self.offsets[r]):int(self.offsets[r + 1])] for r in rows])
        if not (torch.equal(mask.sum(1), lengths) and torch.equal(ids[mask].to(torch.int32), expected)):
            bad = [r for i, r in enumerate(rows)
                   if int(mask[i].sum()) != int(self.lengths[r]) or not torch.equal(
                       ids[i][mask[i]].to(torch.int32), self.token_ids[int(self.offsets[r]):int(self.offsets[r + 1])])]
            raise CacheMismatchError(
                f"the inputs of cached example(s) {bad[:5]} differ from what was cached (different tokens or length): "
                "the frozen-feature cache needs the same inputs every epoch (no augmentation, re-tokenisation or "
                "left padding); run without the cache")
        out = torch.zeros(len(rows), ids.shape[1], self.width, dtype=self.dtype)
        for i, r in enumerate(rows):
            segment, start, end = self._span(r)
            out[i, :end - start] = segment[start:end]
        return out

    def close(self) -> None:
        self.ram = self.disk = torch.zeros(0, self.width, dtype=self.dtype)
        if self.spill_path and os.path.exists(self.spill_path):
            os.remove(self.spill_path)
        self.spill_path = None


class _Captured(Exception):
    """Raised by the capture hook to end a pre-pass forward at the cut."""


def _cached_block_forward(owner: FrozenFeatureCache, original: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    states = owner._states
    if states is None:
        return original(*args, **kwargs)
    return states if owner._block_outputs == 0 else (states,) + (None,) * (owner._block_outputs - 1)


class FrozenFeatureCache:
    """The output of the frozen bottom (embeddings and blocks ``1..cut``) per example; forwards that start from it.

    Args:
        model: the model (unwrapped, or wrapped by DDP / ``torch.compile``: the blocks are found by name); its
            depths ``0..cut`` must be frozen.
        cut: the top frozen block (``LayerwiseConfig.frozen_below(L)``); at least 1.
        layers: the model's layer map (found when not given).
        dtype: storage dtype of the states: ``"float16"`` (default), ``"bfloat16"`` or ``"float32"``.
        max_memory_gb: states beyond this many GiB go to a memory-mapped file in ``spill_dir``.
        spill_dir: folder for that file (one per process: ``feature_cache-rank{N}.bin``).

    Example:
        >>> cache = FrozenFeatureCache(model, cut=3)                                    # doctest: +SKIP
        >>> splits = add_cache_rows({"train": train_ds, "validation": dev_ds})          # doctest: +SKIP
        >>> cache.build(splits.values(), collate_fn=collator, batch_size=64)            # doctest: +SKIP
        >>> for batch in loader:                                                        # doctest: +SKIP
        ...     with cache.use(batch) as inputs:
        ...         loss = model(**inputs).loss
        ...     loss.backward()
    """

    def __init__(self, model: nn.Module, cut: int, layers: LayerMap | None = None, *, dtype: str = "float16",
                 max_memory_gb: float = 4.0, spill_dir: str | None = None) -> None:
        self.layers = layers or discover_layers(model)
        num_layers = self.layers.num_layers
        if not 1 <= cut <= num_layers:
            raise ValueError(f"the frozen-feature cache needs frozen encoder blocks: cut={cut}, the model has "
                             f"{num_layers} blocks (freeze at least block 1, e.g. freeze_below=1..{num_layers})")
        if dtype not in _DTYPES:
            raise ValueError(f"cache dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
        if not (math.isfinite(max_memory_gb) and max_memory_gb >= 0):
            raise ValueError(f"max_memory_gb={max_memory_gb}: must be >= 0")
        self.model, self.cut, self.dtype = model, cut, _DTYPES[dtype]
        self.max_memory_bytes = int(max_memory_gb * 2**30)
        self.spill_dir = spill_dir
        self._frozen = [(name, p) for name, p, depth in self.layers.named_depths(model) if depth <= cut]
        self.check_frozen()
        self._blocks = list(self.layers.blocks(model))[:cut]
        self._states: torch.Tensor | None = None
        self._block_outputs = 0  # 0: a block returns a tensor; n: a tuple of n
        self.store: FeatureStore | None = None
        self.build_time_s = 0.0
        self._installed = False

    # -- checks ------------------------------------------------------------------------------------------------------
    def check_frozen(self) -> None:
        """Raise :class:`CacheMismatchError` if a parameter at or below the cut trains (the cache would be stale)."""
        trainable = [name for name, p in self._frozen if p.requires_grad]
        if trainable:
            raise CacheMismatchError(
                f"{len(trainable)} parameter(s) at or below the cached block {self.cut} are trainable (e.g. "
                f"{trainable[0]!r}): the frozen-feature cache needs depths 0..{self.cut} frozen for the whole run")

    # -- the pre-pass ----------------------------------------------------------------------------------------------------
    def build(self, datasets: Sequence[Any] | Any, collate_fn: Callable[[list[dict]], dict[str, torch.Tensor]],
              batch_size: int = 64, autocast: Callable[[], Any] | None = None) -> None:
        """Run the frozen part once per example of ``datasets`` (each with a ``cache_row`` column from
        :func:`add_cache_rows`) in eval mode, without gradients, and keep its output.

        Under ``torch.distributed`` every process computes a contiguous shard of the rows and the shards are then
        exchanged. Uses no random numbers: the global RNG states are the same before and after. ``autocast`` (e.g.
        ``accelerator.autocast``) runs the pre-pass in the training's mixed precision.
        """
        started = time.perf_counter()
        datasets = list(datasets)
        total, lengths, example = self._index(datasets)
        first_param = next(p for _, p in self._frozen)
        width = self._width()
        rank, world = _rank_world()
        spill = None if self.spill_dir is None else os.path.join(self.spill_dir, f"feature_cache-rank{rank}.bin")
        self.close()
        self.store = FeatureStore(lengths, width, self.dtype, self.max_memory_bytes, spill)
        mine = range(total * rank // world, total * (rank + 1) // world)
        order = sorted(mine, key=lambda r: int(lengths[r]))  # similar lengths together: less padding
        capture = self._blocks[-1]
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, tuple):
                self._block_outputs = len(output)
                output = output[0]
            captured.append(output)
            raise _Captured

        model = _unwrap(self.model)
        was_training = model.training
        model.eval()
        handle = capture.register_forward_hook(hook)
        try:
            with torch.no_grad(), (autocast() if autocast else contextlib.nullcontext()):
                for i in range(0, len(order), batch_size):
                    chunk = order[i:i + batch_size]
                    batch = collate_fn([example(r) for r in chunk])
                    inputs = {k: v.to(first_param.device) for k, v in batch.items()
                              if k not in (CACHE_ROW, "labels", "label")}
                    captured.clear()
                    try:
                        model(**inputs)
                    except _Captured:
                        pass
                    if not captured:
                        raise UnsupportedModelError(f"{type(model).__name__}: block {self.cut} did not run in the "
                                                    "forward; the frozen-feature cache does not support this model")
                    states = captured[0].float().cpu()
                    if i == 0:
                        handle.remove()
                        self._verify(model, inputs, captured[0])
                        handle = capture.register_forward_hook(hook)
                    mask = inputs["attention_mask"].bool().cpu()
                    for j, r in enumerate(chunk):
                        self.store.put(r, states[j][mask[j]], inputs["input_ids"][j].cpu()[mask[j]])
        finally:
            handle.remove()
            model.train(was_training)
        if world > 1:
            self._exchange(total, world)
        self._install()
        self.build_time_s = time.perf_counter() - started
        logger.info("frozen-feature cache: %d examples, %d tokens, blocks 0..%d, %s, %.1f MiB in memory, %.1f MiB on "
                    "disk, built in %.1f s", total, int(lengths.sum()), self.cut, self.dtype,
                    self.store.memory_bytes / 2**20, self.store.disk_bytes / 2**20, self.build_time_s)

    def _index(self, datasets: list[Any]) -> tuple[int, torch.Tensor, Callable[[int], dict]]:
        """The number of rows, their lengths (real tokens), and a lookup ``row -> example``; reads the columns in
        chunks, so a large dataset is not held as Python lists."""
        where: dict[int, tuple[int, int]] = {}
        lengths: dict[int, int] = {}
        for d, ds in enumerate(datasets):
            if CACHE_ROW not in ds.column_names:
                raise ValueError("a dataset given to FrozenFeatureCache.build has no 'cache_row' column: number the "
                                 "splits with add_cache_rows first")
            key = "attention_mask" if "attention_mask" in ds.column_names else "input_ids"
            position = 0
            for chunk in ds.select_columns([CACHE_ROW, key]).iter(batch_size=4096):
                for row, tokens in zip(chunk[CACHE_ROW], chunk[key]):
                    where[int(row)] = (d, position)
                    lengths[int(row)] = int(sum(tokens)) if key == "attention_mask" else len(tokens)
                    position += 1
        total = len(where)
        if sorted(where) != list(range(total)):
            raise ValueError("the cache rows are not 0..N-1 over the datasets given: build with every split numbered "
                             "by one add_cache_rows call")

        def example(row: int) -> dict:
            d, position = where[row]
            return datasets[d][position]

        return total, torch.tensor([lengths[r] for r in range(total)], dtype=torch.int64), example

    def _width(self) -> int:
        config = getattr(_unwrap(self.model), "config", None)
        width = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
        if not isinstance(width, int):
            raise UnsupportedModelError(f"{type(self.model).__name__}: no hidden size in its config; the "
                                        "frozen-feature cache does not support this model")
        return width

    def _verify(self, model: nn.Module, inputs: dict[str, torch.Tensor], states: torch.Tensor) -> None:
        """The cached forward must give the full forward's logits on the first batch (eval mode, states unrounded)."""
        full = _logits(model(**inputs))
        self._install()
        self._states = states
        try:
            cached = _logits(model(**inputs))
        finally:
            self._states = None
        scale = float(full.float().abs().max())
        diff = float((full.float() - cached.float()).abs().max())
        if not diff <= 1e-4 * scale + 1e-7:  # the same arithmetic on the same states: rounding differences only
            self.close()
            raise UnsupportedModelError(
                f"{type(model).__name__} ({getattr(model.config, 'model_type', '?')}): the forward from cached states "
                f"differs from the full forward (max |logit difference| {diff:.3g}); its blocks need more than the "
                "hidden states and the attention mask. Tested: bert, roberta, xlm-roberta, electra, distilbert, mpnet. "
                "Run without the cache")

    def _exchange(self, total: int, world: int) -> None:
        """Every process broadcasts its shard's token range; all processes end with every row."""
        group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        chunk = 64 << 20
        for src in range(world):
            for part in self.store.token_range(total * src // world, total * (src + 1) // world):
                flat = part.view(-1).view(torch.uint8)  # contiguous: a row range of a contiguous array
                for i in range(0, flat.numel(), chunk):
                    dist.broadcast(flat[i:i + chunk], src=src, group=group)
        if group is not None:
            dist.destroy_process_group(group)

    # -- forwards from the cache -----------------------------------------------------------------------------------------
    def _install(self) -> None:
        if self._installed:
            return
        for block in self._blocks:
            block.forward = functools.partial(_cached_block_forward, self, block.forward)
        self._installed = True

    def _uninstall(self) -> None:
        if self._installed:
            for block in self._blocks:
                del block.forward
            self._installed = False

    @contextlib.contextmanager
    def use(self, batch: Mapping[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        """Within the block, the model's frozen blocks return the cached states of ``batch``'s examples; yields the
        batch without its ``cache_row`` column, ready for ``model(**inputs)``.

        Raises:
            CacheMismatchError: the batch's inputs are not the cached ones, or something at or below the cut trains.
        """
        if self.store is None:
            raise RuntimeError("FrozenFeatureCache.use before build(): build the cache first")
        if CACHE_ROW not in batch:
            raise CacheMismatchError("a batch without a 'cache_row' column: keep the column from add_cache_rows in the "
                                     "datasets the loaders read (Trainer: remove_unused_columns=False)")
        self.check_frozen()
        inputs = {k: v for k, v in batch.items() if k != CACHE_ROW}
        rows = batch[CACHE_ROW].tolist()
        states = self.store.gather(rows, inputs["input_ids"], inputs["attention_mask"])
        device = inputs["input_ids"].device
        self._states = states.to(device=device, dtype=self._compute_dtype(), non_blocking=True)
        try:
            yield inputs
        finally:
            self._states = None

    def _compute_dtype(self) -> torch.dtype:
        p = next(self._blocks[-1].parameters(), None)
        return p.dtype if p is not None and p.is_floating_point() else torch.float32

    def stats(self) -> dict[str, Any]:
        """What results.json records about the cache."""
        store = self.store
        return {"cut": self.cut, "depths": list(range(self.cut + 1)), "dtype": str(self.dtype).replace("torch.", ""),
                "frozen_dropout": False, "examples": 0 if store is None else len(store.lengths),
                "tokens": 0 if store is None else int(store.offsets[-1]),
                "memory_bytes": 0 if store is None else store.memory_bytes,
                "disk_bytes": 0 if store is None else store.disk_bytes, "build_time_s": self.build_time_s}

    def close(self) -> None:
        """Give the blocks back their own forward and drop the states (and the spill file)."""
        self._uninstall()
        if self.store is not None:
            self.store.close()


def _logits(outputs: Any) -> torch.Tensor:
    if hasattr(outputs, "logits"):
        return outputs.logits
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs.last_hidden_state


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
