"""The released DVT checkpoints' keys and shapes, written from DESIGN.md §2 alone.

Deliberately independent of `common.naming` and `common.param_spec` (which the converter uses): a
state dict synthesised from this spec checks the converter against the documented layout, not against
itself. Key counts and element counts of the three reference models are asserted against the numbers
in DESIGN.md §2 (650 / 740 / 608 keys; 22,461,516 / 67,881,836 / 70,442,232 elements).
"""
from __future__ import annotations

import numpy as np

PREFIXES = {1: ("",), 2: ("less_token.", "normal_token."), 3: ("less_less_token.", "less_token.", "normal_token.")}
DESIGN_COUNTS = {"dvt_t2t_vit_12": (650, 22_461_516), "dvt_t2t_vit_14": (740, 67_881_836),
                 "dvt_deit_small": (608, 70_442_232)}


def _ln(p, d):
    return {f"{p}.weight": (d,), f"{p}.bias": (d,)}


def _lin(p, o, i, bias=True):
    return {f"{p}.weight": (o, i), **({f"{p}.bias": (o,)} if bias else {})}


def reference_keys(cfg) -> dict[str, tuple]:
    """Reference key -> shape for a config of 1-3 exits (DESIGN.md §2, plus T2T-ViT's token transformer)."""
    d, heads, depth = cfg.dim, cfg.num_heads, cfg.depth
    hidden = int(d * cfg.mlp_ratio)
    keys: dict[str, tuple] = {}
    for k, (prefix, ex) in enumerate(zip(PREFIXES[cfg.num_exits], cfg.exits)):
        p = prefix
        keys[f"{p}cls_token"] = (1, 1, d)
        keys[f"{p}pos_embed"] = (1, ex.grid * ex.grid + 1, d)
        tok = ex.tokenizer
        if cfg.family == "t2t":
            e = tok.token_dim
            in_dims = [cfg.in_chans * tok.splits[0].kernel ** 2] + [e * s.kernel ** 2 for s in tok.splits[1:-1]]
            for i, din in enumerate(in_dims, start=1):
                a = f"{p}tokens_to_token.attention{i}"
                if tok.token_layer == "performer":
                    keys[f"{a}.w"] = (int(e * tok.kernel_ratio), e)
                    keys.update(_lin(f"{a}.kqv", 3 * e, din))
                    keys.update(_lin(f"{a}.proj", e, e))
                    keys.update(_ln(f"{a}.norm1", din))
                    keys.update(_ln(f"{a}.norm2", e))
                    keys.update(_lin(f"{a}.mlp.0", e, e))
                    keys.update(_lin(f"{a}.mlp.2", e, e))
                else:  # T2T-ViT Token_transformer: norm1, attn.qkv (no bias), attn.proj, norm2, mlp.fc1/fc2
                    keys.update(_ln(f"{a}.norm1", din))
                    keys.update(_lin(f"{a}.attn.qkv", 3 * e, din, bias=False))
                    keys.update(_lin(f"{a}.attn.proj", e, e))
                    keys.update(_ln(f"{a}.norm2", e))
                    keys.update(_lin(f"{a}.mlp.fc1", e, e))
                    keys.update(_lin(f"{a}.mlp.fc2", e, e))
            keys.update(_lin(f"{p}tokens_to_token.project", d, e * tok.splits[-1].kernel ** 2))
        else:
            keys[f"{p}patch_embed.proj.weight"] = (d, cfg.in_chans, tok.kernel, tok.kernel)
            keys[f"{p}patch_embed.proj.bias"] = (d,)
        feat = cfg.feature_reuse and k > 0
        mlp_in = d + (cfg.context_dim if feat else 0)
        for i in range(depth):
            b = f"{p}blocks.{i}"
            keys.update(_ln(f"{b}.norm1", d))
            keys.update(_lin(f"{b}.attn.qkv", 3 * d, d, bias=cfg.qkv_bias))
            keys.update(_lin(f"{b}.attn.proj", d, d))
            keys.update(_ln(f"{b}.norm2", mlp_in))
            keys.update(_lin(f"{b}.mlp.fc1", hidden, mlp_in))
            keys.update(_lin(f"{b}.mlp.fc2", d, hidden))
            if feat:
                keys.update(_ln(f"{b}.feature_resuse_mlp.0", d))
                keys.update(_lin(f"{b}.feature_resuse_mlp.1.fc1", cfg.context_hidden, d))
                keys.update(_lin(f"{b}.feature_resuse_mlp.1.fc2", cfg.context_dim, cfg.context_hidden))
        keys.update(_ln(f"{p}norm", d))
        keys.update(_lin(f"{p}head", cfg.num_classes, d))
        if cfg.relation_reuse and k > 0:
            hl = heads * depth
            keys[f"{p}relation_reuse_conv.0.weight"] = (3 * hl, hl, 1, 1)
            keys[f"{p}relation_reuse_conv.0.bias"] = (3 * hl,)
            keys[f"{p}relation_reuse_conv.2.weight"] = (hl, 3 * hl, 1, 1)
            keys[f"{p}relation_reuse_conv.2.bias"] = (hl,)
    return keys


def synthesise(cfg, seed: int) -> dict[str, np.ndarray]:
    """Seeded float32 values for every reference key: weights N(0, 0.02), LayerNorm weights near 1, the
    Performer's `w` random orthogonal rows times sqrt(m) (what its exp() expects)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in reference_keys(cfg).items():
        if key.endswith(".w"):
            m, e = shape
            q, _ = np.linalg.qr(rng.standard_normal((e, m)))
            value = q.T * np.sqrt(m)
        elif key.endswith(".weight") and len(shape) == 1:  # LayerNorm
            value = 1.0 + 0.02 * rng.standard_normal(shape)
        else:
            value = 0.02 * rng.standard_normal(shape)
        out[key] = np.asarray(value, dtype=np.float32)
    return out


def released_container(state: dict) -> dict:
    """What a released file holds besides the weights (DESIGN.md §2), with numpy extras."""
    return {"model_state_dict": state, "flops": [np.float64(0.47), np.float64(1.46), np.float64(3.50)],
            "anytime_classification": np.array([70.1, 75.2, 78.3]), "dynamic_threshold": [0.9, 0.8],
            "budgeted_batch_classification": np.array([[1.0, 70.0], [2.0, 75.0]])}
