"""Every parameter a config implies: canonical name, shape, trainable flag, LayerNorm flag.

Canonical names are the PyTorch module paths (`exits.{k}.blocks.{i}.attn.qkv.weight`). Both
implementations are tested to hold exactly these parameters, so the converter can validate a
checkpoint against a config without building either framework's model.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import DVTConfig, T2TTokenizerConfig


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    trainable: bool = True
    layernorm: bool = False  # LayerNorm affine parameters (named gamma/beta in MindSpore)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _linear(prefix: str, out_dim: int, in_dim: int, bias: bool = True) -> list[ParamSpec]:
    specs = [ParamSpec(f"{prefix}.weight", (out_dim, in_dim))]
    if bias:
        specs.append(ParamSpec(f"{prefix}.bias", (out_dim,)))
    return specs


def _layernorm(prefix: str, dim: int) -> list[ParamSpec]:
    return [ParamSpec(f"{prefix}.weight", (dim,), layernorm=True),
            ParamSpec(f"{prefix}.bias", (dim,), layernorm=True)]


def _mlp(prefix: str, in_dim: int, hidden: int, out_dim: int) -> list[ParamSpec]:
    return _linear(f"{prefix}.fc1", hidden, in_dim) + _linear(f"{prefix}.fc2", out_dim, hidden)


def _t2t_tokenizer(prefix: str, tok: T2TTokenizerConfig, in_chans: int, dim: int) -> list[ParamSpec]:
    specs: list[ParamSpec] = []
    e = tok.token_dim
    for i, d_in in enumerate(tok.layer_in_dims(in_chans), start=1):
        p = f"{prefix}.attention{i}"
        if tok.token_layer == "performer":
            specs.append(ParamSpec(f"{p}.w", (tok.num_random_features, e), trainable=False))
            specs += _linear(f"{p}.kqv", 3 * e, d_in)
            specs += _linear(f"{p}.proj", e, e)
            specs += _layernorm(f"{p}.norm1", d_in)
            specs += _layernorm(f"{p}.norm2", e)
            specs += _linear(f"{p}.mlp.0", e, e) + _linear(f"{p}.mlp.2", e, e)
        else:  # transformer token layer: one head, mlp ratio 1, no qkv bias
            specs += _layernorm(f"{p}.norm1", d_in)
            specs += _linear(f"{p}.attn.qkv", 3 * e, d_in, bias=False)
            specs += _linear(f"{p}.attn.proj", e, e)
            specs += _layernorm(f"{p}.norm2", e)
            specs += _mlp(f"{p}.mlp", e, e, e)
    specs += _linear(f"{prefix}.project", dim, tok.project_in_dim())
    return specs


def exit_parameter_specs(cfg: DVTConfig, k: int, prefix: str = "") -> list[ParamSpec]:
    """Parameters of exit `k`, named relative to `prefix` (e.g. 'exits.0')."""
    p = f"{prefix}." if prefix else ""
    ex = cfg.exits[k]
    d = cfg.dim
    specs = [ParamSpec(f"{p}cls_token", (1, 1, d)),
             ParamSpec(f"{p}pos_embed", (1, ex.num_tokens, d), trainable=cfg.pos_embed == "learned")]
    if isinstance(ex.tokenizer, T2TTokenizerConfig):
        specs += _t2t_tokenizer(f"{p}tokens_to_token", ex.tokenizer, cfg.in_chans, d)
    else:
        kk = ex.tokenizer.kernel
        specs += [ParamSpec(f"{p}patch_embed.proj.weight", (d, cfg.in_chans, kk, kk)),
                  ParamSpec(f"{p}patch_embed.proj.bias", (d,))]
    mlp_in = cfg.block_mlp_in_dim(k)
    for i in range(cfg.depth):
        b = f"{p}blocks.{i}"
        specs += _layernorm(f"{b}.norm1", d)
        specs += _linear(f"{b}.attn.qkv", 3 * d, d, bias=cfg.qkv_bias)
        specs += _linear(f"{b}.attn.proj", d, d)
        specs += _layernorm(f"{b}.norm2", mlp_in)
        specs += _mlp(f"{b}.mlp", mlp_in, cfg.mlp_hidden, d)
        if cfg.uses_feature_reuse(k):
            norm = _layernorm(f"{b}.feature_reuse_mlp.0", d)
            if cfg.feature_reuse_norm == "discarded":  # held for the checkpoints, never used: frozen
                norm = [ParamSpec(s.name, s.shape, trainable=False, layernorm=True) for s in norm]
            specs += norm
            specs += _mlp(f"{b}.feature_reuse_mlp.1", d, cfg.context_hidden, cfg.context_dim)
    specs += _layernorm(f"{p}norm", d)
    if cfg.uses_relation_reuse(k):
        c = cfg.relation_channels
        h = c * cfg.relation_mlp_ratio
        specs += [ParamSpec(f"{p}relation_reuse_conv.0.weight", (h, c, 1, 1)),
                  ParamSpec(f"{p}relation_reuse_conv.0.bias", (h,)),
                  ParamSpec(f"{p}relation_reuse_conv.2.weight", (c, h, 1, 1)),
                  ParamSpec(f"{p}relation_reuse_conv.2.bias", (c,))]
    if cfg.num_classes > 0:  # num_classes=0: identity heads, nothing to store
        specs += _linear(f"{p}head", cfg.num_classes, d)
    return specs


def parameter_specs(cfg: DVTConfig) -> list[ParamSpec]:
    """All parameters of the cascade under canonical names `exits.{k}.…`."""
    specs: list[ParamSpec] = []
    for k in range(cfg.num_exits):
        specs += exit_parameter_specs(cfg, k, prefix=f"exits.{k}")
    return specs


def spec_dict(cfg: DVTConfig) -> dict[str, ParamSpec]:
    return {s.name: s for s in parameter_specs(cfg)}


def count_parameters(cfg: DVTConfig, trainable_only: bool = False) -> int:
    return sum(s.numel for s in parameter_specs(cfg) if s.trainable or not trainable_only)


def exit_parameter_counts(cfg: DVTConfig) -> list[int]:
    return [sum(s.numel for s in exit_parameter_specs(cfg, k)) for k in range(cfg.num_exits)]
