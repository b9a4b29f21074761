"""`DIR/manifest.json`: everything needed to run an export without the code or the checkpoint that made it.

    manifest = read_manifest("exports/t2t12")        # checks format, signatures, files and sha256
    manifest.config, manifest.batch_sizes, manifest.gflops, manifest.graph_path(k, 8)

Format "dvt-export", version 1:

    graph_format       "onnx" | "mindir";  exported_by: "torch" | "mindspore"
    model              name, full config (DVTConfig.to_dict), num_exits, num_classes
    checkpoint         the source file (path, sha256, format, naming, whether it was converted), or null
    input              name, shape [null, C, H, W], dtype float32, layout NCHW
    preprocessing      what common.deploy.preprocess applies (resize, crop, interpolation, mean, std)
    batch              {"mode": "static", "sizes": [1, 8, ...]} or {"mode": "dynamic", "sizes": null}
    exits[k]           grid, tokens, cumulative GFLOPs, attention kind, inputs / outputs (name, shape,
                       dtype), graphs [{batch_size, file, sha256, bytes}]
    thresholds         null, or fixed thresholds and/or a budget curve (common.deploy.thresholds)
    versions           python, numpy, the exporting framework and the graph libraries, this package
    export             exporter, options, seconds; verification: exported graphs vs the eager model
    files              file name -> sha256 of every file of the export besides manifest.json

Nothing here imports a framework.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from common.config import ConfigError, DVTConfig
from common.convert import sha256_file
from common.flops import cumulative_gflops

from .signature import IMAGE, TensorSpec, stage_inputs, stage_outputs

FORMAT = "dvt-export"
VERSION = 1
MANIFEST = "manifest.json"
GRAPH_FORMATS = {"onnx": ".onnx", "mindir": ".mindir"}


class DeployError(ValueError):
    """An export or an exported-graph run that cannot go ahead: the message says what was expected."""


def graph_file_name(k: int, batch: int | None, graph_format: str) -> str:
    """exit1.onnx (dynamic batch) or exit1_b8.onnx (static batch 8); exits are 1-based in file names."""
    return f"exit{k + 1}" + ("" if batch is None else f"_b{batch}") + GRAPH_FORMATS[graph_format]


def check_batch_sizes(sizes) -> tuple[int, ...] | None:
    """Sorted distinct positive sizes, or None (dynamic batch)."""
    if sizes is None:
        return None
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes) or len(set(sizes)) != len(sizes):
        raise DeployError(f"batch sizes must be distinct positive integers, got {sizes}")
    return tuple(sorted(sizes))


def versions(framework_versions: dict) -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        from importlib.metadata import version
        out["dvt"] = version("dvt")
    except Exception:  # not installed as a package (a plain checkout): the version is simply unknown
        out["dvt"] = None
    out.update(framework_versions)
    return out


def build_manifest(cfg: DVTConfig, *, graph_format: str, exported_by: str, directory: Path, graphs: list[dict],
                   batch_sizes, preprocessing: dict, attention: list[str], checkpoint: dict | None = None,
                   thresholds: dict | None = None, framework_versions: dict | None = None,
                   export: dict | None = None, verification: list | None = None) -> dict:
    """The manifest of the graphs written into `directory` (`graphs`: {"exit", "batch_size", "file"})."""
    sizes = check_batch_sizes(batch_sizes)
    gflops = cumulative_gflops(cfg)
    files = {}
    exits = []
    for k in range(cfg.num_exits):
        entries = []
        for g in sorted((g for g in graphs if g["exit"] == k), key=lambda g: (g["batch_size"] or 0)):
            path = Path(directory) / g["file"]
            files[g["file"]] = sha256_file(path)
            entries.append({"batch_size": g["batch_size"], "file": g["file"], "sha256": files[g["file"]],
                            "bytes": path.stat().st_size})
        exits.append({"index": k, "grid": cfg.exits[k].grid, "tokens": cfg.exits[k].num_tokens,
                      "gflops": gflops[k], "attention": attention[k],
                      "inputs": [s.to_dict() for s in stage_inputs(cfg, k)],
                      "outputs": [s.to_dict() for s in stage_outputs(cfg, k)], "graphs": entries})
    return {
        "format": FORMAT, "version": VERSION, "graph_format": graph_format, "exported_by": exported_by,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"name": cfg.name, "config": cfg.to_dict(), "num_exits": cfg.num_exits,
                  "num_classes": cfg.num_classes},
        "checkpoint": checkpoint,
        "input": {"name": IMAGE, "shape": [None, cfg.in_chans, cfg.img_size, cfg.img_size], "dtype": "float32",
                  "layout": "NCHW"},
        "preprocessing": preprocessing,
        "batch": {"mode": "dynamic", "sizes": None} if sizes is None else {"mode": "static", "sizes": list(sizes)},
        "exits": exits,
        "criterion": (thresholds or {}).get("criterion", "confidence"),
        "thresholds": thresholds,
        "versions": versions(framework_versions or {}),
        "export": export or {},
        "verification": verification or [],
        "files": files,
    }


def write_manifest(directory: Path, manifest: dict) -> Path:
    from common.atomic import atomic_write_text
    return atomic_write_text(Path(directory) / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False) + "\n")


class Manifest:
    """A read and checked manifest.json; paths resolve inside its export folder."""

    def __init__(self, data: dict, directory: str | Path):
        self.data = data
        self.directory = Path(directory)
        where = f"{self.directory / MANIFEST}"
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DeployError(f"{where}: not a DVT export manifest (expected format {FORMAT!r})")
        if int(data.get("version", 0)) > VERSION:
            raise DeployError(f"{where}: manifest version {data['version']} is newer than this code reads ({VERSION})")
        self.graph_format = data.get("graph_format")
        if self.graph_format not in GRAPH_FORMATS:
            raise DeployError(f"{where}: unknown graph format {self.graph_format!r}; this code runs "
                              f"{', '.join(sorted(GRAPH_FORMATS))}")
        try:
            self.config = DVTConfig.from_dict(data["model"]["config"])
            batch = data["batch"]
            self.batch_sizes = None if batch["mode"] == "dynamic" else check_batch_sizes(batch["sizes"])
            exits = data["exits"]
        except (KeyError, TypeError, ConfigError) as err:
            raise DeployError(f"{where}: incomplete or damaged manifest ({type(err).__name__}: {err})") from None
        cfg = self.config
        if len(exits) != cfg.num_exits:
            raise DeployError(f"{where}: {len(exits)} exits listed, the model has {cfg.num_exits}")
        self._graphs: dict[tuple[int, int | None], dict] = {}
        for k, ex in enumerate(exits):
            for key, expected in (("inputs", stage_inputs(cfg, k)), ("outputs", stage_outputs(cfg, k))):
                got = [TensorSpec.from_dict(s) for s in ex.get(key, [])]
                if got != expected:
                    raise DeployError(f"{where}: exit {k + 1} {key} {[s.name for s in got]} differ from what this "
                                      f"code runs for {cfg.name} ({[s.name for s in expected]})")
            for g in ex.get("graphs", []):
                self._graphs[(k, g["batch_size"])] = g
            wanted = [None] if self.batch_sizes is None else list(self.batch_sizes)
            missing = [s for s in wanted if (k, s) not in self._graphs]
            if missing:
                raise DeployError(f"{where}: exit {k + 1} has no graph for batch size(s) {missing}")

    # ---- what the runner and the tools read ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def num_exits(self) -> int:
        return self.config.num_exits

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def dynamic(self) -> bool:
        return self.batch_sizes is None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        cfg = self.config
        return (cfg.in_chans, cfg.img_size, cfg.img_size)

    @property
    def gflops(self) -> np.ndarray:
        """(K,) cumulative GFLOPs per image at each exit."""
        return np.array([ex["gflops"] for ex in self.data["exits"]], dtype=np.float64)

    @property
    def preprocessing(self) -> dict:
        return dict(self.data["preprocessing"])

    @property
    def thresholds(self) -> dict | None:
        return self.data.get("thresholds")

    def inputs(self, k: int) -> list[TensorSpec]:
        return stage_inputs(self.config, k)

    def outputs(self, k: int) -> list[TensorSpec]:
        return stage_outputs(self.config, k)

    def graph(self, k: int, batch: int | None) -> dict:
        return self._graphs[(k, batch)]

    def graph_path(self, k: int, batch: int | None) -> Path:
        return self.directory / self.graph(k, batch)["file"]

    def graph_keys(self) -> list[tuple[int, int | None]]:
        return sorted(self._graphs, key=lambda key: (key[0], key[1] or 0))

    def verify_files(self) -> None:
        """Every graph file exists and has the sha256 the manifest records (DeployError otherwise)."""
        for key in self.graph_keys():
            verify_file(self.graph_path(*key), self.graph(*key)["sha256"])

    def describe(self) -> str:
        sizes = "dynamic batch" if self.dynamic else "batch sizes " + ",".join(map(str, self.batch_sizes))
        return (f"{self.name}: {self.num_exits} exits ({self.graph_format}, exported by "
                f"{self.data.get('exported_by')}), {sizes}, input float32 (B, {', '.join(map(str, self.input_shape))})")


def verify_file(path: Path, expected_sha256: str) -> None:
    if not path.is_file():
        raise DeployError(f"graph file {path} is missing (listed in {path.parent / MANIFEST}); re-export the model")
    got = sha256_file(path)
    if got != expected_sha256:
        raise DeployError(f"graph file {path} has sha256 {got}, the manifest records {expected_sha256}: "
                          "the file was changed or damaged after export; refusing to run it (re-export the model)")


def read_manifest(export_dir: str | Path, verify: bool = True) -> Manifest:
    """The checked manifest of an export folder; `verify` also checks every graph file's sha256."""
    directory = Path(export_dir)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise DeployError(f"{directory}: no such export folder (expected the DIR written by tools/export.py)")
    if not path.is_file():
        raise DeployError(f"{directory}: no {MANIFEST} (expected the DIR written by tools/export.py)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DeployError(f"{path}: cannot read the manifest ({type(err).__name__}: {err})") from None
    manifest = Manifest(data, directory)
    if verify:
        manifest.verify_files()
    return manifest
