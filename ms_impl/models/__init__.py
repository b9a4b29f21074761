"""MindSpore cells of DVT, mirroring `torch_impl.models` file for file and class for class;
see `dvt.DVT` for the cascade and `factory.create_model` to build one."""
from .adaptive import AdaptiveResult, ExitStage, adaptive_forward
from .attention import Attention, AttentionLogits
from .block import Block
from .dvt import DVT
from .exit import ExitOutput, ViTExit
from .factory import create_model
from .resample import GridResample
from .tokenizers import PatchEmbed, RandomFeatureAttention, T2TTokenizer, TokenPerformer, TokenTransformer

__all__ = ["AdaptiveResult", "ExitStage", "adaptive_forward", "Attention", "AttentionLogits", "Block", "DVT",
           "ExitOutput", "ViTExit", "create_model", "GridResample", "PatchEmbed", "RandomFeatureAttention",
           "T2TTokenizer", "TokenPerformer", "TokenTransformer"]
