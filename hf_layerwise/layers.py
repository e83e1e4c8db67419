"""Layer discovery: which depth each parameter of a model belongs to.

Depth is defined once for the whole package, for encoders and decoder LLMs alike:

* ``0`` — the embeddings, and whatever the stack shares across all its blocks
  (relative-position embeddings of DeBERTa/MPNet, ELECTRA's embedding projection; a decoder's
  rotary embeddings hold no parameters);
* ``1..L`` — the blocks, bottom to top;
* ``L+1`` — everything after the stack: pooler, final norm, classification / score / LM head.

The blocks are found from the module tree and the model config (the ``nn.ModuleList``
of ``config.num_hidden_layers`` identical blocks), not from one model's parameter names,
so BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ELECTRA, DeBERTa-v2, MPNet, ModernBERT and the decoders
(Llama, Qwen2, Mistral, Gemma, Phi, GPT-2) work without a per-architecture table.

Tied input/output embeddings (``tie_word_embeddings``: one parameter that is both the token embedding
and the LM head) are one parameter at two depths; it gets the head's depth ``L+1`` (it is what the LM
head trains) and is listed in :attr:`LayerMap.tied`. A config that freezes the embeddings would then
freeze the head too, so the optimizer refuses that combination (untie the weights, or keep the
embeddings training). A PEFT model keeps its depths: adapters take their host module's depth, and the
base weights the adapter method keeps frozen are in :attr:`LayerMap.adapter_frozen`.
Models with several stacks (an encoder-decoder such as T5, a vision tower beside a language model) are
refused with the stacks named: one depth order per stack is not supported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

__all__ = ["LayerMap", "UnsupportedModelError", "discover_layers", "layer_map"]

# Wrapper modules (DDP, FSDP, activation checkpointing, torch.compile) add these
# components to parameter names; they carry no meaning for depth.
_WRAPPER_COMPONENTS = {"module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"}
_NUM_LAYER_ATTRS = ("num_hidden_layers", "n_layers", "num_layers", "n_layer")


class UnsupportedModelError(ValueError):
    """The model's encoder blocks could not be found, or layer-wise rates do not apply to it."""


@dataclass(frozen=True)
class LayerMap:
    """Result of :func:`discover_layers`.

    Names are canonical: without the components that wrappers add (DDP's ``module.``, FSDP1's
    ``_fsdp_wrapped_module.``, activation checkpointing's ``_checkpoint_wrapped_module.``, ``torch.compile``'s
    ``_orig_mod.``), so one map serves the model before and after it is wrapped. Look parameters up with
    :meth:`depth_of` or iterate them with :meth:`named_depths`, never with raw names.

    Attributes:
        num_layers: ``L``, the number of encoder blocks.
        block_path: canonical dotted path of the ``nn.ModuleList`` holding the blocks.
        depths: canonical parameter name -> depth in ``0..L+1``.
        modules: depth -> the canonical module paths that hold that depth's parameters (for display).
    """

    num_layers: int
    block_path: str
    depths: dict[str, int]
    modules: dict[int, list[str]]
    tied: tuple[str, ...] = ()  # input embeddings that are also the output head: at depth L+1
    adapter_frozen: frozenset[str] = frozenset()  # a PEFT model's base weights: never trained, whatever the config

    @property
    def head_depth(self) -> int:
        return self.num_layers + 1

    def can_train(self, name: str) -> bool:
        """False for a parameter the adapter method keeps frozen (a PEFT model's base weights), True otherwise."""
        return not self.adapter_frozen or strip_wrappers(name) not in self.adapter_frozen

    def depth_of(self, name: str) -> int:
        """The depth of the parameter ``name`` as any wrapped or unwrapped form of the model names it.

        Raises:
            KeyError: the parameter is not in this map (a map of another model); the message says so.
        """
        try:
            return self.depths[strip_wrappers(name)]
        except KeyError:
            raise KeyError(f"parameter {name!r} is not in this layer map (built for another model? the map has "
                           f"{len(self.depths)} parameters, e.g. {next(iter(self.depths))!r})") from None

    def named_depths(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter, int]]:
        """``(name, parameter, depth)`` for every parameter of ``model``, wrapped (DDP, FSDP1/2, activation
        checkpointing, ``torch.compile``) or not; names as ``model.named_parameters()`` gives them."""
        for name, param in model.named_parameters():
            yield name, param, self.depth_of(name)

    def blocks(self, model: nn.Module) -> nn.Module:
        """The block list inside ``model`` (wrapped or not); its items may be wrapper modules."""
        for name, module in model.named_modules():
            if strip_wrappers(name) == self.block_path and isinstance(module, (nn.ModuleList, nn.Sequential)):
                return module
        raise UnsupportedModelError(f"{type(model).__name__} has no block list {self.block_path!r}: this layer map "
                                    "was built for another model")


def strip_wrappers(name: str) -> str:
    """``module._fsdp_wrapped_module.bert.encoder`` -> ``bert.encoder``."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_COMPONENTS)


def _unwrap(model: nn.Module) -> nn.Module:
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        else:
            return model


def _num_layers_from_config(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for attr in _NUM_LAYER_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _module_lists(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) > 0:
            found.append((strip_wrappers(name), module))
    return found


def _is_block_list(module: nn.Module) -> bool:
    children = list(module.children())
    has_params = any(True for _ in module.parameters())
    return has_params and isinstance(module, nn.ModuleList) and len({type(c) for c in children}) == 1


def _describe_lists(model: nn.Module, lists: list[tuple[str, nn.Module]]) -> str:
    if not lists:
        top = ", ".join(f"{n} ({type(m).__name__})" for n, m in model.named_children()) or "no submodules"
        return f"none (top-level modules: {top})"
    return ", ".join(
        f"{name or '<root>'} ({type(m).__name__} of {len(m)} x {type(next(iter(m.children()))).__name__})"
        for name, m in lists
    )


_OTHER_STACKS = ("vision_config", "audio_config", "text_config", "encoder_config", "decoder_config")


def _outermost(lists: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """The lists not nested inside another one of them (a block's own lists, e.g. MoE experts, are not stacks)."""
    return [(n, m) for n, m in lists if not any(o != n and _within(n, o) for o, _ in lists)]


def _refuse_several_stacks(model: nn.Module, candidates: list[tuple[str, nn.Module]]) -> None:
    config = getattr(model, "config", None)
    several = bool(getattr(config, "is_encoder_decoder", False)) or any(
        getattr(config, key, None) is not None for key in _OTHER_STACKS)
    stacks = _outermost(candidates)
    if several and len(stacks) > 1:
        raise UnsupportedModelError(
            f"{type(model).__name__} has {len(stacks)} stacks of blocks: {_describe_lists(model, stacks)} "
            f"({'an encoder-decoder' if getattr(config, 'is_encoder_decoder', False) else 'several modalities'}). "
            "hf-layerwise gives depths along one stack (an encoder, or a decoder LLM); one depth order per stack is "
            "not supported, and mixing them would give blocks of two stacks the same depth. Fine-tune one stack "
            "alone: the language model of a vision-language model (AutoModelForSequenceClassification / "
            "AutoModelForCausalLM on its text part), T5EncoderModel for an encoder-decoder's encoder")


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    lists = _module_lists(model)
    candidates = [(n, m) for n, m in lists if _is_block_list(m)]
    _refuse_several_stacks(model, candidates)
    expected = _num_layers_from_config(model)
    config = getattr(model, "config", None)
    if expected is not None:
        matching = [(n, m) for n, m in candidates if len(m) == expected]
        if not matching and (getattr(config, "num_hidden_groups", None) is not None or config.model_type == "albert"):
            raise UnsupportedModelError(
                f"{type(model).__name__} shares its encoder weights across all {expected} layers (ALBERT-style "
                f"parameter sharing: {getattr(config, 'num_hidden_groups', 1)} block group(s) reused "
                f"{expected} times), so there is no separate block per depth to freeze or give its own learning "
                "rate, whatever the preset. hf-layerwise cannot train it; fine-tune it with one learning rate "
                "outside hf-layerwise (transformers' run_glue example, or a plain Trainer)."
            )
        candidates = matching
    if not candidates:
        wanted = f" of {expected} identical blocks (config says {expected} layers)" if expected else ""
        raise UnsupportedModelError(
            f"Could not find the encoder blocks of {type(model).__name__}: looked for an nn.ModuleList{wanted}. "
            f"Module lists found: {_describe_lists(model, lists)}. "
            "hf_layerwise supports models whose blocks sit in one nn.ModuleList: encoders (BERT, RoBERTa, "
            "DistilBERT, ELECTRA, DeBERTa-v2, MPNet, ModernBERT, ...) and decoder LLMs (Llama, Qwen2, Mistral, "
            "Gemma, Phi, GPT-2, ...)."
        )
    # Several lists of the right length (e.g. an encoder-decoder): take the one holding the most weights.
    name, blocks = max(candidates, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    return name, blocks


def _common_prefix(a: str, b: str) -> str:
    parts = []
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        parts.append(x)
    return ".".join(parts)


def _input_embedding_path(model: nn.Module) -> str | None:
    getter = getattr(model, "get_input_embeddings", None)
    embedding = None
    if callable(getter):
        try:
            embedding = getter()
        except (NotImplementedError, AttributeError):
            embedding = None
    if embedding is None:  # not a transformers model: the largest embedding table
        tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
        embedding = max(tables, key=lambda m: m.weight.numel()) if tables else None
    for name, module in model.named_modules():
        if module is embedding:
            return strip_wrappers(name)
    return None


def _tied_output_embedding(model: nn.Module) -> nn.Parameter | None:
    """The input embedding weight when the output head is the same parameter (tied word embeddings), else None."""
    try:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    weight = getattr(inp, "weight", None)
    return weight if weight is not None and getattr(out, "weight", None) is weight else None


def _within(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + ".")


def discover_layers(model: nn.Module) -> LayerMap:
    """Find the encoder blocks of ``model`` and give every parameter its depth.

    Rules, applied in order to each parameter outside the blocks:

    1. inside block ``i`` (0-based) -> depth ``i + 1``;
    2. outside the backbone (the smallest module holding both the input embeddings and the
       blocks), e.g. the classification head -> ``L + 1``;
    3. an embedding (``nn.Embedding`` or a module path with ``embed`` in it) -> ``0``;
    4. inside the module that holds the block list, when that is not the backbone itself
       (state the encoder shares across blocks, e.g. DeBERTa's ``encoder.LayerNorm``) -> ``0``;
    5. anything else in the backbone (pooler, final norm) -> ``L + 1``;
    6. input embeddings tied to the output head -> ``L + 1`` (listed in ``tied``).

    A PEFT model's adapter parameters lie inside the modules they adapt and get their depth by these rules; the base
    weights the adapter method keeps frozen are listed in ``adapter_frozen``.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=4,
        ...     num_attention_heads=2, intermediate_size=64))
        >>> lm = discover_layers(model)
        >>> lm.num_layers, lm.depths["bert.encoder.layer.3.output.dense.weight"], lm.depths["classifier.bias"]
        (4, 4, 5)

    Raises:
        UnsupportedModelError: no block list was found (the message lists the module lists that
            were), the model shares one block across layers (ALBERT), or it has several stacks
            (encoder-decoder, vision tower; the message names them).
    """
    from .adapters import adapter_trained_parameters

    root = _unwrap(model)
    block_path, blocks = _find_blocks(root)
    num_layers = len(blocks)
    container = block_path.rsplit(".", 1)[0] if "." in block_path else ""
    embed_path = _input_embedding_path(root)
    backbone = _common_prefix(block_path, embed_path) if embed_path is not None else container

    block_of: dict[int, int] = {}
    for index, block in enumerate(blocks):
        for param in block.parameters():
            block_of[id(param)] = index + 1
    embedding_params = {id(p) for m in root.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    tied_weight = _tied_output_embedding(root)
    trained_by_adapter = adapter_trained_parameters(root)
    tied: list[str] = []
    adapter_frozen: set[str] = set()

    depths: dict[str, int] = {}
    modules: dict[int, list[str]] = {}
    for raw_name, param in model.named_parameters():
        name = strip_wrappers(raw_name)
        module_path = name.rsplit(".", 1)[0] if "." in name else ""
        if trained_by_adapter is not None and id(param) not in trained_by_adapter:
            adapter_frozen.add(name)
        if id(param) in block_of:
            depth = block_of[id(param)]
            module_path = f"{block_path}.{depth - 1}"
        elif tied_weight is not None and param is tied_weight:
            depth = num_layers + 1
            tied.append(name)
        elif not _within(name, backbone):
            depth = num_layers + 1
        elif id(param) in embedding_params or "embed" in module_path.lower():
            depth = 0
        elif container != backbone and _within(name, container):
            depth = 0
        else:
            depth = num_layers + 1
        depths[name] = depth
        paths = modules.setdefault(depth, [])
        if module_path not in paths:
            paths.append(module_path)
    return LayerMap(num_layers=num_layers, block_path=block_path, depths=depths, modules=dict(sorted(modules.items())),
                    tied=tuple(tied), adapter_frozen=frozenset(adapter_frozen))


def layer_map(model: nn.Module) -> dict[str, int]:
    """Map every parameter name (as ``model.named_parameters()`` gives it, wrapper prefixes included) to its depth.

    Depth 0 is the embeddings, ``1..L`` the encoder blocks bottom to top, ``L+1`` the
    pooler and head. See :func:`discover_layers` for the rules.

    Example:
        >>> depths = layer_map(model)          # doctest: +SKIP
        >>> depths["bert.embeddings.word_embeddings.weight"]
        0
    """
    layers = discover_layers(model)
    return {name: depth for name, _, depth in layers.named_depths(model)}
