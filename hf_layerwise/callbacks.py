"""Drop-in `transformers.Trainer` integration: `LayerwiseCallback` and the `LayerwiseTrainer` mixin.

Why a mixin as well as a callback: the Trainer builds its optimizer and scheduler before the
first callback event of ``train()`` and gives callbacks no handle on itself, and its reporting
callbacks (TensorBoard, W&B) read the log dictionary before user callbacks see it. So the part
that must happen inside the Trainer — building the layer-wise AdamW (also under FSDP, where
``optimizers=`` is forbidden, and again on ``resume_from_checkpoint``) and adding the per-depth
figures to the logs — lives in :class:`LayerwiseTrainerMixin`; everything else (freezing, gradual
unfreezing, checks, measuring) lives in :class:`LayerwiseCallback`. A plain ``Trainer`` with the
callback but without a layer-wise optimizer refuses to start instead of silently training with
two groups.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import IntervalStrategy

from .config import LayerwiseConfig
from .freezing import GradualUnfreezer
from .layers import LayerMap, discover_layers
from .monitor import HealthConfig, HealthMonitor
from .optimizer import create_optimizer, param_group_mismatch
from .stats import DepthGradNorms, flat_logs, lr_by_depth, scale_to_preclip

__all__ = ["LayerwiseCallback", "HealthCallback", "LayerwiseTrainerMixin", "LayerwiseTrainer", "check_training_setup"]

logger = logging.getLogger(__name__)


def _epoch_index(state: TrainerState) -> int:
    return int(math.floor((state.epoch or 0.0) + 1e-6))


def _uses_reentrant_checkpointing(model: nn.Module) -> bool:
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            func = getattr(module, "_gradient_checkpointing_func", None)
            keywords = getattr(func, "keywords", {}) or {}
            return keywords.get("use_reentrant") in (None, True)
    return False


def check_training_setup(model: nn.Module, cfg: LayerwiseConfig, layers: LayerMap, accelerator_state: Any = None) -> None:
    """Refuse the known setups in which layer-wise training would silently not happen.

    * activation (gradient) checkpointing with the reentrant implementation and a frozen
      bottom: the first trainable block gets an input without ``requires_grad``, so reentrant
      checkpointing cuts the graph and no block below the head gets a gradient;
    * FSDP (version 1) without ``use_orig_params=True``: parameters are flattened across depths,
      so per-depth groups and freezing cannot be expressed;
    * gradual unfreezing under FSDP or DeepSpeed, which fix the set of trained parameters when the
      model is wrapped;
    * DeepSpeed clipping at another norm than ``cfg.max_grad_norm`` (DeepSpeed clips itself, with its
      config's ``gradient_clipping``).

    Example:
        >>> check_training_setup(model, cfg, discover_layers(model))   # doctest: +SKIP
    """
    bottom_frozen = cfg.frozen_below(layers.num_layers) >= 0 or cfg.unfreeze_every > 0
    if bottom_frozen and _uses_reentrant_checkpointing(model) and not hasattr(model, "_require_grads_hook"):
        raise ValueError(
            "Gradient checkpointing with use_reentrant=True and frozen embeddings: no gradient would reach the "
            "trainable blocks. Enable it with gradient_checkpointing_kwargs={'use_reentrant': False} "
            "(TrainingArguments(activation_checkpointing_kwargs=...)), or call model.enable_input_require_grads()."
        )
    fsdp = getattr(accelerator_state, "fsdp_plugin", None)
    if fsdp is not None:
        if getattr(fsdp, "fsdp_version", 1) == 1 and not getattr(fsdp, "use_orig_params", False):
            raise ValueError(
                "FSDP without use_orig_params=True flattens parameters of different depths together, so "
                "layer-wise learning rates and freezing cannot apply. Set fsdp_use_orig_params: true in the "
                "accelerate config (or fsdp_config={'use_orig_params': True}), or use fsdp_version: 2."
            )
    deepspeed = getattr(accelerator_state, "deepspeed_plugin", None)
    if deepspeed is not None:
        clip = getattr(deepspeed, "gradient_clipping", "auto")
        wanted = cfg.max_grad_norm or 0.0
        if clip not in (None, "auto") and float(clip) != wanted:
            raise ValueError(
                f"The DeepSpeed config clips gradients at {clip} (gradient_clipping) but the layer-wise config asks "
                f"for max_grad_norm={cfg.max_grad_norm}: DeepSpeed clips by itself, so set gradient_clipping: "
                f"{wanted} in the DeepSpeed config or --max_grad_norm {clip}.")
    if cfg.unfreeze_every and (fsdp is not None or deepspeed is not None):
        raise ValueError(
            "Gradual unfreezing (LayerwiseConfig.unfreeze_every) is not supported under FSDP or DeepSpeed, which "
            "fix the trained parameters when they wrap the model. Use DDP, or a static freeze (freeze_below)."
        )


class LayerwiseCallback(TrainerCallback):
    """Freezing, gradual unfreezing, per-depth logging and setup checks for ``transformers.Trainer``.

    Use it with :class:`LayerwiseTrainer` (or :class:`LayerwiseTrainerMixin` on your own Trainer
    subclass), which builds the layer-wise AdamW from the same config. Logged at every logging
    step: ``lr/depth{d}`` (the LR used for that step), ``grad_norm/depth{d}`` (pre-clip gradient
    norm) and ``trainable_params``; the Trainer's own ``grad_norm`` is the overall pre-clip norm.

    Gradient clipping: the Trainer clips once per step with ``args.max_grad_norm``; the callback
    sets that from ``cfg.max_grad_norm`` (0 disables it when ``cfg.max_grad_norm`` is None).

    Example:
        >>> cfg = LayerwiseConfig.preset("top3x5")
        >>> trainer = LayerwiseTrainer(model=model, args=args, train_dataset=train,  # doctest: +SKIP
        ...                            callbacks=[LayerwiseCallback(cfg)])
        >>> trainer.train()                                                         # doctest: +SKIP
    """

    def __init__(self, cfg: LayerwiseConfig | None = None) -> None:
        self.cfg = cfg or LayerwiseConfig()
        self.layers: LayerMap | None = None
        self.unfreezer: GradualUnfreezer | None = None
        self._norms: DepthGradNorms | None = None
        self._pending: dict[str, float] = {}
        self._postclip: dict[int, float] | None = None

    # -- used by LayerwiseTrainerMixin --------------------------------------------------------
    def build_optimizer(self, model: nn.Module, args: TrainingArguments, state: TrainerState) -> torch.optim.AdamW:
        """The layer-wise AdamW for ``model``, at the unfreezing stage of ``state`` (resume-aware)."""
        optim = str(getattr(args.optim, "value", args.optim))
        if not optim.startswith("adamw_torch"):
            warnings.warn(f"LayerwiseTrainer builds torch.optim.AdamW; TrainingArguments.optim={optim} is ignored",
                          stacklevel=2)
        self._bind(model)
        optimizer = create_optimizer(model, self.cfg, args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                     eps=args.adam_epsilon, layers=self.layers,
                                     stage=self.cfg.stage_at(state.global_step, _epoch_index(state)),
                                     fused=True if optim == "adamw_torch_fused" else None)  # as the Trainer does
        self.unfreezer.update(state.global_step, _epoch_index(state))
        return optimizer

    def add_step_logs(self, logs: dict[str, float]) -> None:
        """Add the per-depth figures measured for this logging step to ``logs`` (in place)."""
        if self._postclip is not None:
            self._pending.update(flat_logs("grad_norm", scale_to_preclip(self._postclip, logs.get("grad_norm"))))
            self._postclip = None
        if self._pending and "loss" in logs:
            logs.update(self._pending)
            self._pending = {}

    # -- internals ------------------------------------------------------------------------
    def _bind(self, model: nn.Module) -> None:
        if self.unfreezer is None or self.unfreezer.model is not model:
            self.layers = discover_layers(model)
            self.unfreezer = GradualUnfreezer(model, self.cfg, self.layers)
            self._norms = DepthGradNorms(model, self.layers)

    def _will_log(self, args: TrainingArguments, state: TrainerState) -> bool:
        upcoming = state.global_step + 1
        if upcoming == 1 and args.logging_first_step:
            return True
        if args.logging_strategy == IntervalStrategy.STEPS:
            return state.logging_steps > 0 and upcoming % state.logging_steps == 0
        return args.logging_strategy != IntervalStrategy.NO  # epoch logging: measure every step

    @staticmethod
    def _check_optimizer(optimizer: Any, model: nn.Module, cfg: LayerwiseConfig, layers: LayerMap,
                         lr: float) -> None:
        problem = param_group_mismatch(optimizer, model, cfg, lr, layers=layers)
        if problem:
            raise RuntimeError(
                f"LayerwiseCallback: the Trainer's optimizer does not hold the layer-wise parameter groups ({problem}), "
                "so training would silently ignore the layer-wise config. Use hf_layerwise.LayerwiseTrainer (or "
                "LayerwiseTrainerMixin on your Trainer subclass) instead of transformers.Trainer, or pass "
                "optimizers=(hf_layerwise.create_optimizer(model, cfg, lr=args.learning_rate), None); do not replace "
                "trainer.optimizer afterwards."
            )

    # -- Trainer events -------------------------------------------------------------------------
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is None:
            return  # model_init: bound when the optimizer is built
        self._bind(model)
        self.unfreezer.update(0, 0)
        wanted = self.cfg.max_grad_norm or 0.0
        if args.max_grad_norm != wanted:
            logger.info("LayerwiseCallback: max_grad_norm %s -> %s (from LayerwiseConfig)", args.max_grad_norm, wanted)
            args.max_grad_norm = wanted
        # transformers 5.x multiplies the loss by the number of processes when
        # average_tokens_across_devices is on and the model's forward takes **kwargs, assuming the
        # model divided by the global token count. Sequence-classification heads take a plain mean,
        # so under DDP their gradients (and the pre-clip norm) would be num_processes times too large.
        if (args.world_size > 1 and getattr(args, "average_tokens_across_devices", False)
                and type(model).__name__.endswith(("ForSequenceClassification", "ForMultipleChoice"))):
            logger.warning("LayerwiseCallback: average_tokens_across_devices=False for %s (its loss is a per-batch "
                           "mean; the Trainer would scale it by the %d processes)", type(model).__name__,
                           args.world_size)
            args.average_tokens_across_devices = False

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, optimizer: Any = None, **kwargs: Any) -> None:
        from accelerate.state import AcceleratorState, is_initialized

        self._bind(model)
        check_training_setup(model, self.cfg, self.layers, AcceleratorState() if is_initialized() else None)
        self._check_optimizer(optimizer, model, self.cfg, self.layers, args.learning_rate)
        self.unfreezer.attach_distributed()
        self.unfreezer.update(state.global_step, _epoch_index(state))
        self._pending["trainable_params"] = float(self.unfreezer.trainable_parameters)

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if self.unfreezer.update(state.global_step, _epoch_index(state)):
            self._pending["trainable_params"] = float(self.unfreezer.trainable_parameters)

    on_step_begin = on_epoch_begin

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        if self._will_log(args, state):
            self._postclip = self._norms()

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          optimizer: Any = None, **kwargs: Any) -> None:
        if self._will_log(args, state):  # before the scheduler steps: the LR this step used
            self._pending.update(flat_logs("lr", lr_by_depth(optimizer)))

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        # With LayerwiseTrainer the figures were added before the reporting callbacks ran; with a
        # plain Trainer (optimizers=...) they still reach the log history and later callbacks.
        if logs is not None and (self._pending or self._postclip):
            before = set(logs)
            self.add_step_logs(logs)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update({k: logs[k] for k in set(logs) - before})

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.unfreezer is not None:
            self.unfreezer.detach()


class HealthCallback(TrainerCallback):
    """Drop-in training-health monitor for ``transformers.Trainer`` (see :mod:`hf_layerwise.monitor`).

    Every ``cfg.every_n_steps`` steps it measures each depth, forces a log at that step so the
    ``health/...`` scalars reach the trackers (with :class:`LayerwiseTrainer`, before TensorBoard/W&B
    see the log; with a plain Trainer, in the log history), writes ``health.jsonl`` and TensorBoard
    histograms into ``run_dir`` (default ``args.output_dir``), and checks the weights are finite before
    every checkpoint save, so a NaN stops the run without overwriting the last good checkpoint.

    Example:
        >>> trainer = LayerwiseTrainer(..., callbacks=[LayerwiseCallback(cfg), HealthCallback()])  # doctest: +SKIP
        >>> # afterwards: python -m hf_layerwise report OUTPUT_DIR
    """

    def __init__(self, cfg: HealthConfig | None = None, run_dir: str | None = None) -> None:
        self.cfg = cfg or HealthConfig()
        self.run_dir = run_dir
        self.monitor: HealthMonitor | None = None
        self._pending: dict[str, float] = {}

    def add_step_logs(self, logs: dict[str, float]) -> None:
        if self._pending and "loss" in logs:
            logs.update(self._pending)
            self._pending = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        self.monitor = HealthMonitor(model, self.cfg, run_dir=self.run_dir or args.output_dir,
                                     is_main_process=state.is_world_process_zero)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> None:
        if not self.monitor.active:
            self.monitor.begin(state.global_step + 1)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        self.monitor.before_optimizer_step()

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          optimizer: Any = None, **kwargs: Any) -> None:
        self._pending.update(self.monitor.end(optimizer))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self._pending:
            control.should_log = True
        if control.should_save:
            self.monitor.check_finite_weights(state.global_step)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs is not None and self._pending and "loss" in logs:  # plain Trainer: into the log history
            self.add_step_logs(logs)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update({k: v for k, v in logs.items() if k.startswith("health/")})

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.final_histograms(state.global_step)
            self.monitor.close()


class LayerwiseTrainerMixin:
    """Makes a ``Trainer`` (sub)class build the layer-wise AdamW of its :class:`LayerwiseCallback`.

    ``create_optimizer`` is the Trainer's documented extension point, called on the wrapped model
    under FSDP and again on every ``train(resume_from_checkpoint=...)``; ``log`` adds the
    per-depth figures before TensorBoard / W&B callbacks see the log.

    Example:
        >>> class MyTrainer(LayerwiseTrainerMixin, SomeTrainerSubclass): ...   # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        found = [cb for cb in self.callback_handler.callbacks if isinstance(cb, LayerwiseCallback)]
        if len(found) != 1:
            raise ValueError(
                f"{type(self).__name__} needs exactly one LayerwiseCallback in callbacks= (found {len(found)}): "
                "e.g. LayerwiseTrainer(..., callbacks=[LayerwiseCallback(LayerwiseConfig.preset('top3x5'))])"
            )
        self.layerwise: LayerwiseCallback = found[0]

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            self.optimizer = self.layerwise.build_optimizer(opt_model, self.args, self.state)
        return self.optimizer

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        for callback in self.callback_handler.callbacks:  # LayerwiseCallback, HealthCallback
            if hasattr(callback, "add_step_logs"):
                callback.add_step_logs(logs)
        super().log(logs, *args, **kwargs)


class LayerwiseTrainer(LayerwiseTrainerMixin, Trainer):
    """``transformers.Trainer`` with layer-wise AdamW groups; pass a :class:`LayerwiseCallback` in ``callbacks``.

    Example:
        >>> trainer = LayerwiseTrainer(model=model, args=args, train_dataset=train,   # doctest: +SKIP
        ...                            callbacks=[LayerwiseCallback(LayerwiseConfig.preset("top3x5"))])
    """
