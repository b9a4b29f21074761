"""Framework-neutral checkpoint handling: unwrapping containers and validating against a config.

Both frameworks' loaders and the converter read a checkpoint into a flat name -> array dict, then
call `extract_state_dict` and `check_against_config`, so they accept the same containers, drop the
same bookkeeping, and fail with the same readable report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import DVTConfig
from .naming import FILE_NAMINGS, Naming, detect_naming, expected_shapes, name_map, resolve_aliases

# Containers that wrap a state dict, in order of preference (EMA only when asked for).
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "module")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema")
# Prefixes added by DistributedDataParallel / torch.compile / EMA wrappers.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "ema.", "model.")
# Training bookkeeping that may sit beside the weights (torch containers, MindSpore .ckpt files).
BOOKKEEPING_PREFIXES = ("adam_m.", "adam_v.", "moments.", "accum.", "exp_avg.", "exp_avg_sq.",
                        "max_exp_avg_sq.", "moment1.", "moment2.", "state_step",  # MindSpore Adam/AdamW
                        "optimizer.", "global_step", "learning_rate", "current_iterator_step",
                        "last_overflow_iterator_step", "epoch_num", "step_num", "loss_scale",
                        "scale_sense", "beta1_power", "beta2_power", "momentum")


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model; the message lists every problem."""

    def __init__(self, report: "MismatchReport", context: str = ""):
        self.report = report
        super().__init__(report.format(context))


@dataclass
class MismatchReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mis_shaped: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # name, expected, got

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mis_shaped)

    def format(self, context: str = "", limit: int = 40) -> str:
        lines = [f"checkpoint does not fit {context}".rstrip() + ":"]
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                lines.append(f"  {len(items)} {title} key(s):")
                lines += [f"    {k}" for k in items[:limit]]
                if len(items) > limit:
                    lines.append(f"    ... and {len(items) - limit} more")
        if self.mis_shaped:
            lines.append(f"  {len(self.mis_shaped)} mis-shaped key(s) (expected vs found):")
            lines += [f"    {k}: {tuple(e)} vs {tuple(g)}" for k, e, g in self.mis_shaped[:limit]]
            if len(self.mis_shaped) > limit:
                lines.append(f"    ... and {len(self.mis_shaped) - limit} more")
        return "\n".join(lines)


@dataclass
class Extracted:
    tensors: dict
    container: str  # which key held the weights ('' for a bare state dict)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    extras: dict = field(default_factory=dict)  # non-tensor entries kept aside (e.g. thresholds)


def _is_tensor_like(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def is_bookkeeping(name: str) -> bool:
    return name.startswith(BOOKKEEPING_PREFIXES)


def extract_state_dict(obj, use_ema: bool = False) -> Extracted:
    """Find the weights inside a loaded checkpoint object and flatten wrapper prefixes.

    Accepts the reference containers (`model_state_dict`; `state_dict` / `state_dict_ema` from the
    training script), timm/DeiT-style `model` / `state_dict_ema`, and bare state dicts.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a checkpoint dict, got {type(obj).__name__}")
    container = ""
    keys = (EMA_KEYS + STATE_DICT_KEYS) if use_ema else STATE_DICT_KEYS
    for key in keys:
        if isinstance(obj.get(key), dict):
            container, inner = key, obj[key]
            break
    else:
        if use_ema:
            raise ValueError(f"no EMA weights in this checkpoint (looked for {list(EMA_KEYS)}); "
                             f"top-level keys: {sorted(obj)[:20]}")
        inner = obj
    extras = {k: v for k, v in obj.items() if k != container and not _is_tensor_like(v)} if container else {}
    tensors, dropped = {}, {}
    for name, value in inner.items():
        if is_bookkeeping(name):
            dropped["optimizer/training state"] = dropped.get("optimizer/training state", 0) + 1
            continue
        if not _is_tensor_like(value):
            if container == "":
                extras[name] = value
            continue
        tensors[name] = value
    tensors = strip_wrapper_prefixes(tensors)
    return Extracted(tensors, container, dropped, extras)


def strip_wrapper_prefixes(tensors: dict) -> dict:
    """Remove a prefix such as `module.` when every key carries it."""
    changed = True
    while changed and tensors:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                changed = True
    return tensors


def check_against_config(shapes: dict[str, tuple], cfg: DVTConfig, naming: Naming) -> MismatchReport:
    """Compare name -> shape against every tensor `cfg` implies under `naming` (aliases read as their names)."""
    expected = expected_shapes(cfg, naming)
    shapes = resolve_aliases(shapes, cfg, naming)
    report = MismatchReport()
    report.missing = [k for k in expected if k not in shapes]
    report.unexpected = sorted(k for k in shapes if k not in expected)
    report.mis_shaped = [(k, expected[k], tuple(shapes[k])) for k in expected
                         if k in shapes and tuple(shapes[k]) != expected[k]]
    return report


def resolve_naming(names, cfg: DVTConfig, naming: Naming | None = None) -> Naming:
    """The naming a set of keys uses (detected when not given); raises if nothing matches."""
    if naming is not None:
        return naming
    detected = detect_naming(names, cfg)
    if detected is None:
        sample = sorted(names)[:5]
        raise CheckpointMismatchError(
            MismatchReport(missing=list(name_map(cfg, "canonical"))[:5], unexpected=sample),
            f"model {cfg.name!r} (no key matches its canonical, MindSpore, reference or MindSpore-port names)")
    return detected


def infer_configs(shapes: dict[str, tuple], candidates: list[DVTConfig]) -> list[tuple[DVTConfig, Naming]]:
    """Configs (with the naming) that `shapes` fits exactly; used when `--model` is not given."""
    fits = []
    for cfg in candidates:
        for naming in FILE_NAMINGS:
            try:
                if check_against_config(shapes, cfg, naming).ok:
                    fits.append((cfg, naming))
                    break
            except KeyError:
                continue
    return fits
