"""hf-layerwise: layer-wise learning rates, freezing and gradual unfreezing for Hugging Face encoders and decoder LLMs
(with or without PEFT LoRA adapters).

Example:
    >>> from hf_layerwise import LayerwiseConfig, create_optimizer
    >>> optimizer = create_optimizer(model, LayerwiseConfig.preset("top3x5"), lr=2e-5)   # doctest: +SKIP
"""

from .adapters import depth_rank_pattern
from .callbacks import HealthCallback, LayerwiseCallback, LayerwiseTrainer, LayerwiseTrainerMixin, check_training_setup
from .config import PRESETS, LayerwiseConfig
from .feature_cache import CacheMismatchError, FrozenFeatureCache, add_cache_rows
from .freezing import GradualUnfreezer, freeze, set_stage, unfreeze
from .lr_finder import LRFinderResult, find_lr, label_offset_loss, scan_multiplier
from .layers import LayerMap, UnsupportedModelError, discover_layers, layer_map
from .monitor import HealthConfig, HealthMonitor, NonFiniteError
from .optimizer import create_optimizer, no_weight_decay_names, param_group_mismatch, param_groups
from .stats import DepthGradNorms, lr_by_depth

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CacheMismatchError",
    "DepthGradNorms",
    "FrozenFeatureCache",
    "GradualUnfreezer",
    "HealthCallback",
    "HealthConfig",
    "HealthMonitor",
    "NonFiniteError",
    "LRFinderResult",
    "LayerMap",
    "LayerwiseCallback",
    "LayerwiseConfig",
    "LayerwiseTrainer",
    "LayerwiseTrainerMixin",
    "UnsupportedModelError",
    "add_cache_rows",
    "check_training_setup",
    "create_optimizer",
    "depth_rank_pattern",
    "discover_layers",
    "find_lr",
    "freeze",
    "label_offset_loss",
    "layer_map",
    "lr_by_depth",
    "no_weight_decay_names",
    "param_group_mismatch",
    "param_groups",
    "scan_multiplier",
    "set_stage",
    "unfreeze",
]
