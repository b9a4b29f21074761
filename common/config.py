"""Framework-neutral description of a DVT cascade.

One `DVTConfig` fully determines a model: both `torch_impl` and `ms_impl` build from it, the FLOPs
counter and the parameter spec read it, and nothing about the architecture is decided twice.
All exits of a cascade share one Transformer shape (dim/depth/heads); they differ only in the
tokenizer, which sets the token grid (DESIGN.md §1-2).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Union

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConfigError(ValueError):
    """A configuration that cannot describe a working model."""


@dataclass(frozen=True)
class SoftSplit:
    """One `Unfold(kernel, stride, padding)` soft split (or a conv patch embedding's geometry)."""

    kernel: int
    stride: int
    padding: int = 0

    def out_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel) // self.stride + 1


@dataclass(frozen=True)
class T2TTokenizerConfig:
    """Tokens-to-token: `splits[0]` unfolds the image, each later split follows a token layer.

    The reference uses three splits and two token layers (`attention1`, `attention2`), then a
    Linear `project` from `token_dim * k^2` to the model width.
    """

    splits: tuple[SoftSplit, ...]
    token_layer: Literal["performer", "transformer"] = "performer"
    token_dim: int = 64
    kernel_ratio: float = 0.5  # Performer random features: m = token_dim * kernel_ratio
    dropout: float = 0.1  # hard-coded inside the reference Performer layers (train mode only)

    @property
    def num_token_layers(self) -> int:
        return len(self.splits) - 1

    @property
    def num_random_features(self) -> int:
        return int(self.token_dim * self.kernel_ratio)

    def grid(self, img_size: int) -> int:
        size = img_size
        for split in self.splits:
            size = split.out_size(size)
        return size

    def layer_in_dims(self, in_chans: int) -> list[int]:
        """Input width of each token layer (unfolded patch length)."""
        dims = [in_chans * self.splits[0].kernel ** 2]
        dims += [self.token_dim * s.kernel ** 2 for s in self.splits[1:-1]]
        return dims

    def project_in_dim(self) -> int:
        return self.token_dim * self.splits[-1].kernel ** 2

    def layer_lengths(self, img_size: int) -> list[int]:
        """Number of tokens each token layer sees (after the split that precedes it)."""
        lengths, size = [], img_size
        for split in self.splits[:-1]:
            size = split.out_size(size)
            lengths.append(size * size)
        return lengths


@dataclass(frozen=True)
class PatchTokenizerConfig:
    """DeiT-style Conv2d patch embedding (kernel = stride in the reference, optional padding)."""

    kernel: int
    stride: int
    padding: int = 0

    def grid(self, img_size: int) -> int:
        return SoftSplit(self.kernel, self.stride, self.padding).out_size(img_size)


TokenizerConfig = Union[T2TTokenizerConfig, PatchTokenizerConfig]


@dataclass(frozen=True)
class ExitConfig:
    """One exit of the cascade: its tokenizer and the token grid it must produce."""

    grid: int
    tokenizer: TokenizerConfig

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1  # cls token first


@dataclass(frozen=True)
class DVTConfig:
    """A cascade of `len(exits)` vision Transformers sharing width, depth and heads."""

    name: str
    family: Literal["t2t", "deit"]
    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    exits: tuple[ExitConfig, ...]
    qkv_bias: bool = False
    qk_scale: float | None = None  # None: head_dim ** -0.5 (what every DVT model uses)
    norm_eps: float = 1e-5
    gelu: Literal["erf", "tanh"] = "erf"
    pos_embed: Literal["sinusoid", "learned"] = "sinusoid"
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000  # 0: identity heads (the model returns pooled features, timm's convention)
    feature_reuse: bool = True
    relation_reuse: bool = True
    context_hidden: int = 128  # feature-reuse MLP: LN(D) -> Linear(D, 128) -> GELU -> Linear(128, 48)
    context_dim: int = 48
    relation_mlp_ratio: int = 3  # relation-reuse 1x1 convs: HL -> 3HL -> GELU -> HL
    # Where the MindSpore port's math differs from the PyTorch reference (DESIGN.md §3); the defaults are
    # the reference. `reuse_resample`: how reused features and relations go from s x s to t x t tokens,
    # "nearest_avgpool" (nearest x2 then adaptive average pooling) or "nearest" (plain nearest resize,
    # index floor(j * s / t): the port's exact x2 for t = 2s). Both are the same 0/1 matrix at t = 2s; they
    # differ elsewhere and in FLOPs (fvcore charges the pooling too).
    reuse_resample: Literal["nearest_avgpool", "nearest"] = "nearest_avgpool"
    # "discarded": the port computes the context MLP's LayerNorm and throws the result away (a bug kept for
    # its checkpoints): the parameters exist, are loaded and saved, and are frozen (no gradient reaches them).
    feature_reuse_norm: Literal["applied", "discarded"] = "applied"
    detach_reused_features: bool = False  # port: stop-gradient on the reused features (not on relations)
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.1
    # Preprocessing defaults (timm pretrained-cfg convention).
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        validate(self)

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def num_exits(self) -> int:
        return len(self.exits)

    @property
    def grids(self) -> tuple[int, ...]:
        return tuple(e.grid for e in self.exits)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def scale(self) -> float:
        return self.qk_scale if self.qk_scale is not None else self.head_dim ** -0.5

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def relation_channels(self) -> int:
        """Channels of the stacked attention logits of one exit: heads x blocks."""
        return self.num_heads * self.depth

    @property
    def reuses(self) -> bool:
        return self.feature_reuse or self.relation_reuse

    def uses_feature_reuse(self, exit_index: int) -> bool:
        return self.feature_reuse and exit_index > 0

    def uses_relation_reuse(self, exit_index: int) -> bool:
        return self.relation_reuse and exit_index > 0

    def block_mlp_in_dim(self, exit_index: int) -> int:
        return self.dim + (self.context_dim if self.uses_feature_reuse(exit_index) else 0)

    def drop_path_rates(self) -> list[float]:
        """Stochastic depth rate per block (linear 0 -> drop_path_rate, as timm/reference)."""
        if self.depth == 1:
            return [0.0]
        return [self.drop_path_rate * i / (self.depth - 1) for i in range(self.depth)]

    def replace(self, **overrides) -> "DVTConfig":
        """A validated copy with some fields changed (unknown names raise ConfigError)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {unknown} for {self.name!r}; valid fields: {sorted(names)}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "DVTConfig":
        """Inverse of `to_dict` (used for the config saved next to checkpoints)."""
        data = dict(data)
        exits = []
        for e in data.pop("exits"):
            tok = dict(e["tokenizer"])
            if "splits" in tok:
                tok["splits"] = tuple(SoftSplit(**s) for s in tok["splits"])
                tokenizer: TokenizerConfig = T2TTokenizerConfig(**tok)
            else:
                tokenizer = PatchTokenizerConfig(**tok)
            exits.append(ExitConfig(grid=e["grid"], tokenizer=tokenizer))
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return DVTConfig(exits=tuple(exits), **data)


def max_reuse_ratio() -> int:
    """A grid may grow by at most this factor between consecutive exits (nearest x2 resampling)."""
    return 2


def validate(cfg: DVTConfig) -> None:
    """Raise ConfigError with a message that names the field and what was expected."""
    where = f"config {cfg.name!r}"
    if cfg.family not in ("t2t", "deit"):
        raise ConfigError(f"{where}: family must be 't2t' or 'deit', got {cfg.family!r}")
    for fname in ("dim", "depth", "num_heads", "img_size", "in_chans",
                  "context_hidden", "context_dim", "relation_mlp_ratio"):
        value = getattr(cfg, fname)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {fname} must be a positive integer, got {value!r}")
    if not isinstance(cfg.num_classes, int) or cfg.num_classes < 0:
        raise ConfigError(f"{where}: num_classes must be an integer >= 0 (0: no classifier heads, features only), "
                          f"got {cfg.num_classes!r}")
    if cfg.dim % cfg.num_heads:
        raise ConfigError(
            f"{where}: num_heads={cfg.num_heads} does not divide dim={cfg.dim}")
    if cfg.mlp_ratio <= 0 or cfg.mlp_hidden < 1:
        raise ConfigError(f"{where}: mlp_ratio must give a hidden width >= 1, got {cfg.mlp_ratio}")
    if cfg.norm_eps <= 0:
        raise ConfigError(f"{where}: norm_eps must be > 0, got {cfg.norm_eps}")
    if cfg.gelu not in ("erf", "tanh"):
        raise ConfigError(f"{where}: gelu must be 'erf' (exact) or 'tanh', got {cfg.gelu!r}")
    if cfg.reuse_resample not in ("nearest_avgpool", "nearest"):
        raise ConfigError(f"{where}: reuse_resample must be 'nearest_avgpool' or 'nearest', got {cfg.reuse_resample!r}")
    if cfg.feature_reuse_norm not in ("applied", "discarded"):
        raise ConfigError(
            f"{where}: feature_reuse_norm must be 'applied' or 'discarded', got {cfg.feature_reuse_norm!r}")
    if not isinstance(cfg.detach_reused_features, bool):
        raise ConfigError(f"{where}: detach_reused_features must be True or False, got {cfg.detach_reused_features!r}")
    if cfg.pos_embed not in ("sinusoid", "learned"):
        raise ConfigError(f"{where}: pos_embed must be 'sinusoid' or 'learned', got {cfg.pos_embed!r}")
    for fname in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
        value = getattr(cfg, fname)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{where}: {fname} must be in [0, 1), got {value}")
    if not cfg.exits:
        raise ConfigError(f"{where}: a cascade needs at least one exit")
    if cfg.num_exits == 1 and cfg.reuses:
        raise ConfigError(
            f"{where}: feature/relation reuse needs at least two exits (got one); "
            "set feature_reuse=False and relation_reuse=False for a single model")
    expected_tok = T2TTokenizerConfig if cfg.family == "t2t" else PatchTokenizerConfig
    for k, ex in enumerate(cfg.exits):
        if not isinstance(ex.tokenizer, expected_tok):
            raise ConfigError(
                f"{where}: exit {k} has a {type(ex.tokenizer).__name__}, "
                f"family {cfg.family!r} expects {expected_tok.__name__}")
        if isinstance(ex.tokenizer, T2TTokenizerConfig):
            _validate_t2t(where, k, ex.tokenizer)
        got = ex.tokenizer.grid(cfg.img_size)
        if got != ex.grid:
            raise ConfigError(
                f"{where}: exit {k} declares a {ex.grid}x{ex.grid} token grid but its tokenizer "
                f"{_describe(ex.tokenizer)} produces {got}x{got} from a {cfg.img_size}x{cfg.img_size} image")
        if ex.grid < 1:
            raise ConfigError(f"{where}: exit {k} produces an empty token grid")
    if cfg.reuses:
        for k in range(1, cfg.num_exits):
            s, t = cfg.exits[k - 1].grid, cfg.exits[k].grid
            if not s <= t <= max_reuse_ratio() * s:
                raise ConfigError(
                    f"{where}: reuse from exit {k - 1} ({s}x{s}) to exit {k} ({t}x{t}) needs "
                    f"s <= t <= 2s (nearest x2 upsampling then average pooling); got s={s}, t={t}")


def _validate_t2t(where: str, k: int, tok: T2TTokenizerConfig) -> None:
    if len(tok.splits) < 2:
        raise ConfigError(f"{where}: exit {k} T2T tokenizer needs >= 2 soft splits, got {len(tok.splits)}")
    if tok.token_layer not in ("performer", "transformer"):
        raise ConfigError(
            f"{where}: exit {k} token_layer must be 'performer' or 'transformer', got {tok.token_layer!r}")
    if tok.token_dim < 1 or (tok.token_layer == "performer" and tok.num_random_features < 1):
        raise ConfigError(f"{where}: exit {k} token_dim/kernel_ratio give no features")
    if not 0.0 <= tok.dropout < 1.0:
        raise ConfigError(f"{where}: exit {k} tokenizer dropout must be in [0, 1), got {tok.dropout}")
    for s in tok.splits:
        if s.kernel < 1 or s.stride < 1 or s.padding < 0:
            raise ConfigError(f"{where}: exit {k} has an invalid soft split {s}")


def _describe(tok: TokenizerConfig) -> str:
    if isinstance(tok, T2TTokenizerConfig):
        return "T2T[" + ", ".join(f"k{s.kernel}/s{s.stride}/p{s.padding}" for s in tok.splits) + "]"
    return f"patch[k{tok.kernel}/s{tok.stride}/p{tok.padding}]"
