"""The inputs and outputs of each exported exit, declared once for both exporters and the runner.

Exit k is one graph. Its inputs are the image rows and exactly what it reuses from exit k-1; its outputs
are its logits and exactly what exit k+1 reuses (DESIGN.md §1):

    x                  (B, C, H, W)          every exit
    prev_features      (B, T_{k-1}, D)       exit k reuses features (final tokens of exit k-1, before its norm)
    prev_relations.l   (B, H, T_{k-1}, T_{k-1})  exit k reuses relations: block l's attention logits, l < depth
    logits             (B, num_classes)      every exit
    features           (B, T_k, D)           exit k+1 reuses features
    relations.l        (B, H, T_k, T_k)      exit k+1 reuses relations

so the outputs of exit k after `logits` are, in order, the inputs of exit k+1 after `x`. `B` is `None`
(dynamic) until a graph fixes it. torch_impl/export.py and ms_impl/export.py build their graphs from this
declaration, the manifest records it, and the runner feeds the graphs by it.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.config import DVTConfig

IMAGE = "x"
LOGITS = "logits"
DTYPE = "float32"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output; `shape[0]` is the batch (None: dynamic)."""

    name: str
    shape: tuple
    dtype: str = DTYPE

    def with_batch(self, batch: int | None) -> "TensorSpec":
        return TensorSpec(self.name, (batch,) + tuple(self.shape[1:]), self.dtype)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_dict(d: dict) -> "TensorSpec":
        return TensorSpec(str(d["name"]), tuple(d["shape"]), str(d.get("dtype", DTYPE)))


def _reuse_specs(cfg: DVTConfig, k: int, prefix: str, features: bool, relations: bool) -> list[TensorSpec]:
    """Exit k's features / relations, as exit k+1 receives them."""
    t = cfg.exits[k].num_tokens
    specs = [TensorSpec(f"{prefix}features", (None, t, cfg.dim))] if features else []
    if relations:
        specs += [TensorSpec(f"{prefix}relations.{layer}", (None, cfg.num_heads, t, t)) for layer in range(cfg.depth)]
    return specs


def sends_features(cfg: DVTConfig, k: int) -> bool:
    """Exit k hands its final tokens on (exit k+1 reuses features)."""
    return k + 1 < cfg.num_exits and cfg.uses_feature_reuse(k + 1)


def sends_relations(cfg: DVTConfig, k: int) -> bool:
    """Exit k hands its attention logits on, so it must compute them explicitly (no fused attention)."""
    return k + 1 < cfg.num_exits and cfg.uses_relation_reuse(k + 1)


def stage_inputs(cfg: DVTConfig, k: int) -> list[TensorSpec]:
    image = TensorSpec(IMAGE, (None, cfg.in_chans, cfg.img_size, cfg.img_size))
    if k == 0:
        return [image]
    return [image] + _reuse_specs(cfg, k - 1, "prev_", cfg.uses_feature_reuse(k), cfg.uses_relation_reuse(k))


def stage_outputs(cfg: DVTConfig, k: int) -> list[TensorSpec]:
    logits = TensorSpec(LOGITS, (None, cfg.num_classes))
    return [logits] + _reuse_specs(cfg, k, "", sends_features(cfg, k), sends_relations(cfg, k))

