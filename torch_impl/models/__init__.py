"""PyTorch modules of DVT; see `dvt.DVT` for the cascade and `factory.create_model` to build one."""
from .adaptive import AdaptiveResult, adaptive_forward
from .block import Block
from .dvt import DVT
from .exit import ExitOutput, ViTExit
from .factory import checkpoint_filter_fn, create_model, pretrained_cfg
from .tokenizers import PatchEmbed, T2TTokenizer, TokenPerformer, TokenTransformer

__all__ = ["AdaptiveResult", "adaptive_forward", "Block", "DVT", "ExitOutput", "ViTExit", "checkpoint_filter_fn",
           "create_model", "pretrained_cfg", "PatchEmbed", "T2TTokenizer", "TokenPerformer", "TokenTransformer"]
