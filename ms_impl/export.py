"""MINDIR export of a DVT: one graph per exit (and per batch size), and the backend that runs them.

    records = export_graphs(model, folder, batch_sizes=(1, 8, 32, 64))   # or batch_sizes=None: dynamic batch
    checks = verify_graphs(model, folder, records)                       # every graph vs the eager cell
    runner = common.deploy.load_runner(folder)                           # -> MindirBackend below

Mirror of torch_impl/export.py. Exit k's graph is `ExportStage(model, k)` with the inputs and outputs of
`common.deploy.signature`; it is written with `mindspore.export(..., file_format="MINDIR")` from example
tensors of the batch size (static graphs: what MindSpore Lite compiles for Ascend 310/910) or with a `None`
batch axis (`Tensor(shape=[None, ...])`, one dynamic-batch graph). MindSpore's ONNX export cannot export DVT
(exact GELU, resize; DESIGN.md §8), so MINDIR is the format. `MindirBackend` loads a graph with
`mindspore.load` and runs it as `nn.GraphCell`. MindSpore 2.10 has no fused attention kernel on CPU, so every
exit's attention is the explicit math; an exit whose logits nobody reuses just does not output them.
"""
from __future__ import annotations

import time
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn

from common.config import DVTConfig
from common.deploy.manifest import DeployError, Manifest, graph_file_name, verify_file
from common.deploy.signature import sends_features, sends_relations, stage_inputs
from common.deploy.verify import compare_outputs

from .models import DVT
from .models.factory import skip_init

FRAMEWORK = "mindspore"
GRAPH_FORMAT = "mindir"
NAMING = "mindspore"  # the tensor names `model_from_tensors` takes (common.naming)
TRACE_BATCH = 2


class ExportStage(nn.Cell):
    """Exit k as one graph: `construct(x, *reused) -> (logits, *what exit k+1 reuses)` (common.deploy.signature).

    `auto_prefix=False`: wrapping the exit must not rename the model's parameters."""

    def __init__(self, model: DVT, k: int):
        super().__init__(auto_prefix=False)
        cfg = model.config
        self.exit_ = model.exits[k]
        self.depth = cfg.depth
        self.feature_reuse = self.exit_.feature_reuse
        self.relation_reuse = self.exit_.relation_reuse
        self.send_features = sends_features(cfg, k)
        self.send_relations = sends_relations(cfg, k)

    def construct(self, x, *reused):
        features = None
        relations = None
        if self.feature_reuse:
            features = reused[0]
        if self.relation_reuse:
            relations = reused[len(reused) - self.depth:]
        logits, feats, rels = self.exit_(x, features, relations, False, self.send_relations, True)
        out = (logits,)
        if self.send_features:
            out += (feats,)
        if self.send_relations:
            out += rels
        return out


def attention(cfg: DVTConfig) -> list[str]:
    """How each exit's graph computes attention (recorded in the manifest)."""
    return [f"explicit: exit {k + 2} reuses the attention logits" if sends_relations(cfg, k)
            else "explicit math, logits not output (MindSpore has no fused attention on CPU)"
            for k in range(cfg.num_exits)]


def framework_versions() -> dict:
    return {"mindspore": ms.__version__}


def export_options() -> dict:
    return {"exporter": "mindspore.export(file_format='MINDIR')"}


def model_from_tensors(cfg: DVTConfig, tensors: dict) -> DVT:
    """A DVT cell in eval mode holding `tensors` (MindSpore names -> numpy arrays, as `common.convert` gives)."""
    with skip_init():
        model = DVT(cfg)
    params = dict(model.parameters_and_names())
    to_load = {name: Parameter(Tensor(np.ascontiguousarray(v)).astype(params[name].dtype), name=name,
                               requires_grad=params[name].requires_grad) for name, v in tensors.items()}
    not_loaded, unused = ms.load_param_into_net(model, to_load, strict_load=True)
    if not_loaded or unused:
        raise DeployError(f"{cfg.name}: tensors do not fit the cell (not loaded {list(not_loaded)[:5]}, unused "
                          f"{list(unused)[:5]})")
    model.set_train(False)
    return model


def random_model(cfg: DVTConfig, seed: int = 0) -> DVT:
    """A DVT with the framework's seeded random initialisation (benchmarks: speed does not depend on weights)."""
    ms.set_seed(seed)
    model = DVT(cfg)
    model.set_train(False)
    return model


def random_inputs(cfg: DVTConfig, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size).astype(np.float32)


def eager_stages(model: DVT, x: np.ndarray) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """Per exit, the (inputs, outputs) of its `ExportStage` run op by op (PYNATIVE) on every row of `x`."""
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        out, reused = [], ()
        for k in range(model.num_exits):
            args = (np.ascontiguousarray(x),) + reused
            stage = ExportStage(model, k)
            stage.set_train(False)
            res = stage(*(Tensor(a) for a in args))
            res = [r.asnumpy() for r in (res if isinstance(res, (tuple, list)) else (res,))]
            out.append((list(args), res))
            reused = tuple(res[1:])
    finally:
        ms.set_context(mode=mode)
    return out


def export_graphs(model: DVT, folder, batch_sizes=None, progress=None) -> list[dict]:
    """Write one MINDIR graph per exit and batch size (None: one dynamic-batch graph per exit) into `folder`.

    Returns [{"exit", "batch_size", "file", "seconds"}]; DeployError when the exporter cannot handle a stage.
    """
    model.set_train(False)
    cfg = model.config
    folder = Path(folder)
    records = []
    for k in range(model.num_exits):
        stage = ExportStage(model, k)
        stage.set_train(False)
        for size in (batch_sizes or [None]):
            start = time.perf_counter()
            specs = stage_inputs(cfg, k)
            if size is None:
                args = [Tensor(shape=[None] + list(s.shape[1:]), dtype=ms.float32) for s in specs]
            else:
                args = [Tensor(random_inputs(cfg, size))] + [
                    Tensor(np.zeros(s.with_batch(size).shape, np.float32)) for s in specs[1:]]
            name = graph_file_name(k, size, GRAPH_FORMAT)
            try:
                ms.export(stage, *args, file_name=str(folder / Path(name).stem), file_format="MINDIR")
            except Exception as err:  # MindSpore's compile errors come as RuntimeError, TypeError, ValueError...
                raise DeployError(f"MindSpore's MINDIR export cannot handle exit {k + 1} of {cfg.name}: "
                                  f"{type(err).__name__}: {err}") from err
            if not (folder / name).is_file():
                raise DeployError(f"MindSpore's MINDIR export of exit {k + 1} of {cfg.name} wrote no {name}")
            records.append({"exit": k, "batch_size": size, "file": name,
                            "seconds": round(time.perf_counter() - start, 3)})
            if progress:
                progress(f"exit {k + 1}/{cfg.num_exits}, batch {size or 'dynamic'}: {name}")
    return records


def _graph_cell(path: Path) -> nn.GraphCell:
    try:
        return nn.GraphCell(ms.load(str(path)))
    except Exception as err:  # a damaged or foreign file surfaces as RuntimeError / ValueError from the loader
        raise DeployError(f"MindSpore cannot load {path}: {type(err).__name__}: {err}") from None


def _run_cell(cell: nn.GraphCell, feeds) -> list[np.ndarray]:
    out = cell(*(Tensor(np.ascontiguousarray(f)) for f in feeds))
    return [o.asnumpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def verify_graphs(model: DVT, folder, records: list[dict], seed: int = 0, tolerance: float = 1e-4) -> list[dict]:
    """Load every exported graph and compare its outputs with the eager cell's on random images (and the
    reused tensors the eager model computes from them); see torch_impl.export.verify_graphs."""
    cfg = model.config
    checks = []
    for size in sorted({r["batch_size"] for r in records}, key=lambda s: s or 0):
        rows = size or TRACE_BATCH + 1
        stages = eager_stages(model, random_inputs(cfg, rows, seed))
        for r in (r for r in records if r["batch_size"] == size):
            inputs, expected = stages[r["exit"]]
            got = _run_cell(_graph_cell(Path(folder) / r["file"]), inputs)
            checks.append(compare_outputs(cfg, r, rows, got, expected, tolerance))
    return checks


class MindirBackend:
    """Runs an export's MINDIR graphs with `mindspore.load` + `nn.GraphCell` (common.deploy runner backend)."""

    name = "mindspore"

    def __init__(self, manifest: Manifest, device: str = "auto", threads: int | None = None):
        from .runtime import configure, device_target
        if device not in (None, "auto"):
            try:
                configure(device=device)
            except RuntimeError:  # the runtime already started in this process: fine if it is that device
                if ms.get_context("device_target") != device_target(device):
                    raise
        if threads:
            from mindspore.device_context.cpu.op_tuning import threads_num
            try:
                threads_num(int(threads))
            except RuntimeError:  # already set in this process; keep the earlier value
                pass
        self.manifest = manifest
        self.threads = threads
        self._cells: dict = {}

    def info(self) -> dict:
        return {"mindspore": ms.__version__, "device": ms.get_context("device_target"),
                "threads": self.threads or "default"}

    def cell(self, k: int, batch: int | None) -> nn.GraphCell:
        key = (k, batch)
        if key not in self._cells:
            path = self.manifest.graph_path(k, batch)
            verify_file(path, self.manifest.graph(k, batch)["sha256"])
            self._cells[key] = _graph_cell(path)
        return self._cells[key]

    def load_all(self) -> None:
        for key in self.manifest.graph_keys():
            self.cell(*key)

    def run(self, k: int, batch: int | None, feeds: list[np.ndarray]) -> list[np.ndarray]:
        return _run_cell(self.cell(k, batch), feeds)
