"""Feature-API rules both frameworks share: which blocks `forward_intermediates` takes, pool types.

timm's contract (`timm.models._features.feature_take_indices`), written once here because MindSpore has no
timm and `common` imports neither framework: `indices=None` takes every block, an int n the last n, a
sequence those blocks (negative counts from the end). A test checks it against timm's own function.
"""
from __future__ import annotations


GLOBAL_POOLS = ("", "token", "avg", "max", "avgmax")  # timm's ViT pool types ('' = no pooling)


def check_pool(global_pool: str) -> None:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS} ('' = no pooling), got {global_pool!r}")


def take_indices(num_blocks: int, indices=None) -> tuple[list[int], int]:
    """-> (absolute block indices in the order asked, the largest of them)."""
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"last-n indices={indices} is out of range (1 to {num_blocks})")
        taken = list(range(num_blocks - indices, num_blocks))
    else:
        taken = []
        for i in indices:
            idx = num_blocks + i if i < 0 else i
            if not 0 <= idx < num_blocks:
                raise ValueError(f"feature index {i} is out of range for {num_blocks} blocks "
                                 f"(0 to {num_blocks - 1}, or negative from the end)")
            taken.append(idx)
        if not taken:
            raise ValueError("indices is empty: name at least one block")
    return taken, max(taken)


def exit_position(num_exits: int, exit_index: int) -> int:
    """`exit_index` (negative counts from the last exit) -> 0-based position, with a clear error."""
    k = num_exits + exit_index if exit_index < 0 else exit_index
    if not 0 <= k < num_exits:
        raise ValueError(f"exit_index={exit_index} is out of range for {num_exits} exit(s)")
    return k


def reduction(img_size: int, grid: int):
    """Input pixels per token along one side (timm's feature_info `reduction`; 22.4 for a 10x10 grid at 224)."""
    return img_size // grid if img_size % grid == 0 else img_size / grid
