"""Framework-neutral core of DVT: configs, registry, FLOPs, parameter names, thresholds, evaluation.

Imports neither torch nor mindspore (a test enforces it), so both implementations and the tools
share it.
"""
from .config import (ConfigError, DVTConfig, ExitConfig, PatchTokenizerConfig, SoftSplit,
                     T2TTokenizerConfig)
from .flops import cascade_flops, cumulative_flops, cumulative_gflops, exit_flops
from .naming import name_map, rename
from .param_spec import ParamSpec, count_parameters, parameter_specs, spec_dict
from .registry import REFERENCE_MODELS, get_config, is_tiny, list_models
from .resample import resample_matrix

__all__ = [
    "ConfigError", "DVTConfig", "ExitConfig", "PatchTokenizerConfig", "SoftSplit", "T2TTokenizerConfig",
    "cascade_flops", "cumulative_flops", "cumulative_gflops", "exit_flops", "name_map", "rename",
    "ParamSpec", "count_parameters", "parameter_specs", "spec_dict", "REFERENCE_MODELS", "get_config",
    "is_tiny", "list_models", "resample_matrix",
]
