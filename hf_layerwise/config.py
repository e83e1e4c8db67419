"""`LayerwiseConfig`: what to freeze, which depths get which learning-rate multiplier, and presets."""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LayerwiseConfig", "PRESETS"]


@dataclass(frozen=True)
class LayerwiseConfig:
    """Layer-wise fine-tuning settings.

    Depth 0 is the embeddings, ``1..L`` the encoder blocks (bottom to top), ``L+1`` the head.

    Args:
        freeze_below: freeze the embeddings and blocks ``1..N`` (0 = nothing frozen).
        freeze_fraction: alternative to ``freeze_below`` that does not need ``L``: freeze the
            embeddings and the bottom ``floor(fraction * L)`` blocks (0.5 = bottom half).
        freeze_embeddings: freeze only the embeddings (depth 0).
        top_k: number of top blocks (``L-k+1..L``) trained at ``lr * top_lr_multiplier``.
        top_lr_multiplier: LR multiplier of the top ``k`` blocks; > 0, a warning outside 1..20.
        layer_decay: layer-wise LR decay ``xi``: depth ``d`` trains at ``lr * xi**(L+1-d)``
            (head at ``lr``), multiplied with the top-k multiplier when both are set.
        head_lr_multiplier: LR multiplier of depth ``L+1``.
        weight_decay: AdamW weight decay; never applied to biases and normalization weights.
        max_grad_norm: clip gradients to this global norm once per step (``None`` = no clipping).
        unfreeze_every: gradual unfreezing (ULMFiT): every this many ``unfreeze_unit``\\ s one more
            depth becomes trainable, from the top down, embeddings last. Training starts with only
            the head (depth ``L+1``) trainable. 0 = off.
        unfreeze_unit: ``"epochs"`` or ``"steps"`` (optimizer steps).
        cache_frozen: train from cached outputs of the frozen bottom (embeddings and blocks ``1..freeze_below``),
            computed once per example without dropout: see :class:`hf_layerwise.FrozenFeatureCache`. Needs at least
            one frozen block. Read by the GLUE recipes (``--cache_frozen``); the optimizer ignores it.
        loraplus_ratio: LoRA+ (Hayou et al. 2024): a PEFT LoRA model's B matrices train at this multiple of the LR
            of the A matrices at the same depth (on top of the depth's multipliers); ``None`` = off. Needs a LoRA
            model.

    Example:
        >>> cfg = LayerwiseConfig(freeze_below=6, top_k=3, top_lr_multiplier=5.0)
        >>> LayerwiseConfig.preset("top3x10").top_lr_multiplier
        10.0
    """

    freeze_below: int = 0
    freeze_fraction: float = 0.0
    freeze_embeddings: bool = False
    top_k: int = 3
    top_lr_multiplier: float = 5.0
    layer_decay: float | None = None
    head_lr_multiplier: float = 1.0
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    unfreeze_every: int = 0
    unfreeze_unit: Literal["epochs", "steps"] = "epochs"
    cache_frozen: bool = False
    loraplus_ratio: float | None = None

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        def bad(field: str, value: Any, why: str) -> ValueError:
            return ValueError(f"LayerwiseConfig.{field}={value!r}: {why}")

        for name in ("freeze_below", "top_k", "unfreeze_every"):  # bool is an int: True would read as 1
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise bad(name, value, f"must be an integer (got {type(value).__name__})")
        optional = ("layer_decay", "max_grad_norm", "loraplus_ratio")
        for name in ("freeze_fraction", "top_lr_multiplier", "head_lr_multiplier", "weight_decay", *optional):
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                none = " or None" if name in optional else ""
                raise bad(name, value, f"must be a number{none} (got {type(value).__name__})")
        for name in ("freeze_embeddings", "cache_frozen"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, getattr(self, name), f"must be True or False (got {type(getattr(self, name)).__name__})")
        if self.freeze_below < 0:
            raise bad("freeze_below", self.freeze_below, "must be an integer >= 0 (0 = nothing frozen)")
        if not 0.0 <= self.freeze_fraction < 1.0:
            raise bad("freeze_fraction", self.freeze_fraction, "must be in [0, 1) (0.5 = freeze the bottom half)")
        if self.freeze_below and self.freeze_fraction:
            raise bad("freeze_fraction", self.freeze_fraction, f"set either freeze_below ({self.freeze_below}) or "
                      "freeze_fraction, not both")
        if self.top_k < 0:
            raise bad("top_k", self.top_k, "must be an integer >= 0")
        for name in ("top_lr_multiplier", "head_lr_multiplier"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise bad(name, value, "learning-rate multipliers must be finite and > 0")
        if self.loraplus_ratio is not None and not (math.isfinite(self.loraplus_ratio) and self.loraplus_ratio > 0):
            raise bad("loraplus_ratio", self.loraplus_ratio, "must be finite and > 0 (LoRA+ uses 2-32; None = off)")
        if self.top_k and not 1.0 <= self.top_lr_multiplier <= 20.0:
            warnings.warn(
                f"LayerwiseConfig.top_lr_multiplier={self.top_lr_multiplier} is outside the usual 1..20 range",
                stacklevel=3,
            )
        if self.layer_decay is not None and not (math.isfinite(self.layer_decay) and 0 < self.layer_decay):
            raise bad("layer_decay", self.layer_decay, "must be > 0 (typically 0.8-0.95), or None to disable")
        if self.layer_decay is not None and self.layer_decay > 1:
            warnings.warn(f"LayerwiseConfig.layer_decay={self.layer_decay} > 1 raises the LR of lower layers",
                          stacklevel=3)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", self.weight_decay, "must be >= 0")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise bad("max_grad_norm", self.max_grad_norm, "must be > 0, or None to disable clipping")
        if self.unfreeze_every < 0:
            raise bad("unfreeze_every", self.unfreeze_every, "must be an integer >= 0 (0 = no gradual unfreezing)")
        if self.unfreeze_unit not in ("epochs", "steps"):
            raise bad("unfreeze_unit", self.unfreeze_unit, "must be 'epochs' or 'steps'")

    # -- resolved against a model with L blocks ---------------------------------------------
    def frozen_below(self, num_layers: int) -> int:
        """The highest statically frozen depth for a model with ``num_layers`` blocks (-1 = none)."""
        n = self.freeze_below or int(self.freeze_fraction * num_layers)
        if n > num_layers:
            raise ValueError(
                f"LayerwiseConfig.freeze_below={n} is larger than the model's {num_layers} encoder blocks; "
                f"use at most {num_layers}"
            )
        if n:
            return n
        return 0 if self.freeze_embeddings else -1

    def validate_for(self, num_layers: int) -> None:
        """Check the settings that depend on the number of blocks ``L``; raise ``ValueError`` naming the field."""
        if self.top_k > num_layers:
            raise ValueError(
                f"LayerwiseConfig.top_k={self.top_k} is larger than the model's {num_layers} encoder blocks; "
                f"use at most {num_layers}"
            )
        frozen = self.frozen_below(num_layers)
        if self.freeze_fraction and int(self.freeze_fraction * num_layers) == 0:
            raise ValueError(
                f"LayerwiseConfig.freeze_fraction={self.freeze_fraction} of the model's {num_layers} encoder blocks "
                f"freezes none of them (floor({self.freeze_fraction} x {num_layers}) = 0): use at least "
                f"{1 / num_layers:.3g}, freeze_below, or freeze_embeddings"
            )
        if self.cache_frozen and frozen < 1:
            raise ValueError(
                "LayerwiseConfig.cache_frozen=True needs frozen encoder blocks to cache, but nothing below block 1 is "
                "frozen: set freeze_below (or freeze_fraction, or a preset such as top3x5-freeze)"
            )
        if self.top_k and frozen >= num_layers - self.top_k + 1:
            raise ValueError(
                f"LayerwiseConfig.top_k={self.top_k} boosts blocks {num_layers - self.top_k + 1}..{num_layers} "
                f"but freeze_below={frozen} freezes blocks up to {frozen}: lower top_k or freeze_below"
            )

    def lr_multiplier(self, depth: int, num_layers: int) -> float:
        """The LR multiplier of ``depth`` (0..L+1) for a model with ``num_layers`` blocks."""
        scale = 1.0
        if self.layer_decay is not None:
            scale *= self.layer_decay ** (num_layers + 1 - depth)
        if self.top_k and num_layers - self.top_k + 1 <= depth <= num_layers:
            scale *= self.top_lr_multiplier
        if depth == num_layers + 1:
            scale *= self.head_lr_multiplier
        return scale

    def unfreeze_stage(self, depth: int, num_layers: int) -> int:
        """The gradual-unfreezing stage (0, 1, ...) from which ``depth`` trains; 0 without gradual unfreezing."""
        if not self.unfreeze_every:
            return 0
        return num_layers + 1 - depth

    def is_trainable(self, depth: int, num_layers: int, stage: int | None = None) -> bool:
        """Whether ``depth`` trains at gradual-unfreezing ``stage`` (``None`` = ever during the run)."""
        if depth <= self.frozen_below(num_layers):
            return False
        return stage is None or self.unfreeze_stage(depth, num_layers) <= stage

    def stage_at(self, step: int, epoch: int) -> int:
        """The gradual-unfreezing stage after ``step`` optimizer steps / ``epoch`` whole epochs."""
        if not self.unfreeze_every:
            return 0
        progress = epoch if self.unfreeze_unit == "epochs" else step
        return progress // self.unfreeze_every

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> LayerwiseConfig:
        """A named configuration, optionally with fields overridden.

        Presets: ``baseline`` (nothing frozen, one LR: what the Trainer does), ``top3x5``,
        ``top3x10`` (top 3 blocks at 5x/10x), ``top3x5-freeze`` (also freezes the embeddings and the
        bottom half), ``llrd-0.95`` (Sun et al. 2019), ``llrd-0.8`` (ELECTRA), ``ulmfit`` (each
        depth's LR divided by 2.6 going down, one more depth unfrozen per epoch).

        Example:
            >>> LayerwiseConfig.preset("llrd-0.95", weight_decay=0.0).layer_decay
            0.95
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, LayerwiseConfig] = {
    "baseline": LayerwiseConfig(top_k=0, top_lr_multiplier=1.0),
    "top3x5": LayerwiseConfig(top_k=3, top_lr_multiplier=5.0),
    "top3x10": LayerwiseConfig(top_k=3, top_lr_multiplier=10.0),
    "top3x5-freeze": LayerwiseConfig(top_k=3, top_lr_multiplier=5.0, freeze_fraction=0.5),
    "llrd-0.95": LayerwiseConfig(top_k=0, top_lr_multiplier=1.0, layer_decay=0.95),
    "llrd-0.8": LayerwiseConfig(top_k=0, top_lr_multiplier=1.0, layer_decay=0.8),
    "ulmfit": LayerwiseConfig(top_k=0, top_lr_multiplier=1.0, layer_decay=1 / 2.6, unfreeze_every=1,
                              unfreeze_unit="epochs"),
}


@dataclass
class LayerwiseArguments:
    """Command-line form of :class:`LayerwiseConfig` for ``transformers.HfArgumentParser``.

    Every field left unset (None) keeps the preset's value (or the ``LayerwiseConfig`` default
    without a preset).

    Example:
        >>> from transformers import HfArgumentParser
        >>> (args,) = HfArgumentParser(LayerwiseArguments).parse_args_into_dataclasses(
        ...     ["--preset", "top3x5", "--top_lr_multiplier", "8"])
        >>> args.to_config().top_lr_multiplier
        8.0
    """

    preset: str | None = dataclasses.field(default=None, metadata={"help": f"one of: {', '.join(PRESETS)}"})
    freeze_below: int | None = dataclasses.field(default=None, metadata={"help": "freeze embeddings and blocks 1..N"})
    freeze_fraction: float | None = dataclasses.field(default=None, metadata={"help": "freeze the bottom fraction"})
    freeze_embeddings: bool = dataclasses.field(default=False, metadata={"help": "freeze the embeddings"})
    top_k: int | None = dataclasses.field(default=None, metadata={"help": "number of top blocks boosted"})
    top_lr_multiplier: float | None = dataclasses.field(default=None, metadata={"help": "LR multiplier of top_k"})
    layer_decay: float | None = dataclasses.field(default=None, metadata={"help": "layer-wise LR decay xi"})
    head_lr_multiplier: float | None = dataclasses.field(default=None, metadata={"help": "LR multiplier of the head"})
    layerwise_weight_decay: float | None = dataclasses.field(
        default=None, metadata={"help": "weight decay (default 0.01; --weight_decay of a recipe sets it too)"})
    max_grad_norm: float | None = dataclasses.field(default=None, metadata={"help": "clip norm; 0 disables"})
    unfreeze_every: int | None = dataclasses.field(default=None, metadata={"help": "gradual unfreezing interval"})
    unfreeze_unit: str | None = dataclasses.field(default=None, metadata={"help": "'epochs' or 'steps'"})
    cache_frozen: bool = dataclasses.field(default=False, metadata={
        "help": "run the frozen bottom once per example (no dropout there) and train from its cached output"})
    loraplus_ratio: float | None = dataclasses.field(default=None, metadata={
        "help": "LoRA+: LoRA B matrices at this multiple of the A matrices' LR (needs --lora_r)"})

    def to_config(self, **defaults: Any) -> LayerwiseConfig:
        """The :class:`LayerwiseConfig`; ``defaults`` fill fields the command line left unset.

        Raises:
            ValueError: an option that would do nothing with the others (``--top_lr_multiplier`` when top_k is 0,
                ``--unfreeze_unit`` without gradual unfreezing, ``--freeze_embeddings`` when ``--freeze_below`` or
                ``--freeze_fraction`` freezes them already), or an impossible value (naming the field).
        """
        cfg = self._config(defaults)
        origin = f" (preset {self.preset})" if self.preset else ""
        if self.top_lr_multiplier not in (None, "auto") and not cfg.top_k:
            raise ValueError(f"--top_lr_multiplier {self.top_lr_multiplier} multiplies the LR of the top_k blocks, but "
                             f"top_k is 0{origin}: pass --top_k N (or a preset with top blocks), or drop it")
        if self.unfreeze_unit is not None and not cfg.unfreeze_every:
            raise ValueError(f"--unfreeze_unit {self.unfreeze_unit} sets the unit of gradual unfreezing, which is off "
                             f"(unfreeze_every 0{origin}): pass --unfreeze_every N, or drop it")
        if self.freeze_embeddings and (cfg.freeze_below or cfg.freeze_fraction):
            raise ValueError("--freeze_embeddings does nothing here: --freeze_below/--freeze_fraction"
                             f"{origin} freezes the embeddings already; drop it")
        return cfg

    def _config(self, defaults: dict[str, Any]) -> LayerwiseConfig:
        overrides = dict(defaults)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "preset" or value is None or value is False:
                continue
            key = "weight_decay" if f.name == "layerwise_weight_decay" else f.name
            overrides[key] = None if key == "max_grad_norm" and value == 0 else value
        return LayerwiseConfig.preset(self.preset, **overrides) if self.preset else LayerwiseConfig(**overrides)
