"""One export, whole or not at all: graphs, the export-time check, the manifest, in a staging folder.

    manifest = export_model(model, "exports/t2t12", "onnx", batch_sizes=(1, 8, 32, 64))

The framework half is an exporter module (`torch_impl.export` for ONNX, `ms_impl.export` for MINDIR) with
FRAMEWORK, GRAPH_FORMAT, NAMING, `export_graphs`, `verify_graphs`, `attention`, `framework_versions`,
`export_options` and `model_from_tensors`; it is imported only when its format is asked for.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path

from .manifest import GRAPH_FORMATS, DeployError, Manifest, build_manifest, check_batch_sizes, read_manifest, \
    write_manifest
from .preprocess import eval_preprocessing
from .staging import staged_folder

# graph format -> (exporter module, framework it needs)
EXPORTERS = {"onnx": ("torch_impl.export", "torch"), "mindir": ("ms_impl.export", "mindspore")}


def exporter_for(graph_format: str):
    """The exporter module of a graph format (DeployError for an unknown one or a missing framework)."""
    if graph_format not in EXPORTERS:
        raise DeployError(f"unknown export format {graph_format!r}; expected one of {', '.join(sorted(GRAPH_FORMATS))}")
    module, framework = EXPORTERS[graph_format]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DeployError(f"{graph_format} export needs {framework} "
                          f"({err.name or framework} is not installed)") from None


def export_model(model, out, graph_format: str, batch_sizes=None, *, thresholds: dict | None = None,
                 checkpoint: dict | None = None, force: bool = False, verify: bool = True,
                 progress=None) -> Manifest:
    """Export `model` (a DVT of the format's framework) into the folder `out`; return its manifest.

    `batch_sizes`: static graphs per exit and size; None: one dynamic-batch graph per exit. `thresholds`:
    a `common.deploy.thresholds.thresholds_entry`; `checkpoint`: where the weights came from (manifest).
    `out` appears only once everything is written and checked; an existing `out` needs `force`.
    """
    exporter = exporter_for(graph_format)
    sizes = check_batch_sizes(batch_sizes)
    cfg = model.config
    preprocessing = eval_preprocessing(cfg)
    start = time.perf_counter()
    with staged_folder(out, force) as tmp:
        records = exporter.export_graphs(model, tmp, sizes, progress)
        exported = time.perf_counter()
        checks = exporter.verify_graphs(model, tmp, records) if verify else []
        if progress and checks:
            worst = max(max(c["max_abs_diff"].values()) for c in checks)
            progress(f"verified {len(checks)} graphs against the eager model: max |diff| {worst:.2g}")
        manifest = build_manifest(
            cfg, graph_format=graph_format, exported_by=exporter.FRAMEWORK, directory=tmp, graphs=records,
            batch_sizes=sizes, preprocessing=preprocessing, attention=exporter.attention(cfg),
            checkpoint=checkpoint, thresholds=thresholds, framework_versions=exporter.framework_versions(),
            export={**exporter.export_options(), "export_seconds": round(exported - start, 3),
                    "verify_seconds": round(time.perf_counter() - exported, 3),
                    "graph_seconds": {r["file"]: r["seconds"] for r in records}},
            verification=checks)
        write_manifest(tmp, manifest)
    return read_manifest(Path(out))
