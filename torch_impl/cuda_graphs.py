"""CUDA graphs of the exit stages of adaptive inference, one per (exit, padded batch size).

    graphs = StageGraphs()                       # keep it: graphs are captured once and replayed
    res = model.forward_adaptive(x, thresholds, graphs=graphs)

On a GPU an exit stage of a small batch is dominated by kernel launches; a CUDA graph replays the whole
stage with one launch. The routing stays on the host (DESIGN.md §8): each stage is its own graph, and
the number of samples reaching a stage changes from batch to batch, so a stage of n samples runs the
graph captured for `bucket(n)` (n rounded up to a multiple of `granularity`): the n rows are copied into
the graph's static input buffers, the pad rows hold earlier (finite) inputs, and only the first n output
rows are used. Every operation of an exit is per sample, so pad rows never affect real ones.

Graphs are captured lazily, the first time a (stage, bucket, dtype/autocast, options) combination is
met (a warm-up run on a side stream, then the capture), under the caller's autocast and inference mode.
`capture` is what records and replays a stage: `cuda_capture` on CUDA; tests on CPU pass `eager_capture`
(replays by calling the stage again), which exercises the same buffer and padding logic.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch


class CapturedStage(NamedTuple):
    replay: Callable[[], None]  # runs the stage on the static inputs, refreshing the static outputs
    inputs: tuple  # static input tensors (x, features or None, reused relation maps or None)
    outputs: tuple  # static outputs (logits, features, relations)


def cuda_capture(fn: Callable, inputs: tuple, warmup: int = 2) -> CapturedStage:
    """Warm up `fn(*inputs)` on a side stream, then capture it into a `torch.cuda.CUDAGraph`."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn(*inputs)
    return CapturedStage(graph.replay, inputs, outputs)


def eager_capture(fn: Callable, inputs: tuple) -> CapturedStage:
    """The stand-in of `cuda_capture` off the GPU: the same static buffers, replayed by calling `fn` again."""
    holder = [fn(*inputs)]

    def replay() -> None:
        new = fn(*inputs)
        for old, fresh in zip(_flat(holder[0]), _flat(new)):
            old.copy_(fresh)  # outputs live in fixed buffers, as a CUDA graph's do

    return CapturedStage(replay, inputs, holder[0])


def _flat(out) -> list:
    logits, features, relations = out
    flat = [logits, features]
    if relations is not None:
        flat += relations.tensors() if hasattr(relations, "tensors") else list(relations)
    return [t for t in flat if t is not None]


class StageGraphs:
    """Captured exit stages of one model, looked up by (exit, bucket size, input kinds, autocast, options)."""

    def __init__(self, granularity: int = 16, capture: Callable | None = None):
        if granularity < 1:
            raise ValueError(f"granularity must be >= 1, got {granularity}")
        self.granularity = granularity
        self.capture = capture or cuda_capture
        self.stages: dict[tuple, CapturedStage] = {}
        self.model_id = None

    def bucket(self, n: int) -> int:
        g = self.granularity
        return -(-n // g) * g

    def __len__(self) -> int:
        return len(self.stages)

    def run(self, model, k: int, stage: Callable, x: torch.Tensor, features, relations, **options):
        """`stage(x, features, relations, **options)` (exit k of `model`) through the graph of its bucket;
        -> the outputs' first `len(x)` rows (the logits cloned: they must outlive the next replay)."""
        if self.model_id is None:
            self.model_id = id(model)
        elif self.model_id != id(model):
            raise ValueError("these StageGraphs were captured for another model: use one StageGraphs per model")
        n = x.shape[0]
        nb = self.bucket(n)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else None
        key = (k, nb, features is not None, relations is not None, dtype, tuple(sorted(options.items())))
        captured = self.stages.get(key)
        if captured is None:
            inputs = (_padded(x, nb), None if features is None else _padded(features, nb),
                      None if relations is None else tuple(_padded(r, nb) for r in relations))
            captured = self.stages[key] = self.capture(lambda *a: stage(*a, **options), inputs)
        for static, given in zip(_flat_inputs(captured.inputs), _flat_inputs((x, features, relations))):
            static[:n].copy_(given)
        captured.replay()
        logits, feats, rels = captured.outputs
        if rels is not None:
            rels = rels.narrow(n) if hasattr(rels, "narrow") else tuple(r[:n] for r in rels)
        return logits[:n].clone(), None if feats is None else feats[:n], rels


def _padded(t: torch.Tensor, rows: int) -> torch.Tensor:
    """A static buffer of `rows` rows holding `t` in front and zeros after (finite pad rows)."""
    out = t.new_zeros((rows, *t.shape[1:]))
    out[:t.shape[0]].copy_(t)
    return out


def _flat_inputs(inputs: tuple) -> list:
    x, features, relations = inputs
    return [x] + ([] if features is None else [features]) + ([] if relations is None else list(relations))
