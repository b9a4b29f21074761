"""The throughput benchmark's helpers and a smoke run of tools/benchmark.py on tiny configs.

Benchmarks are measurements: nothing here asserts a time or a speedup, only that the tool runs,
splits the batch as asked, and writes valid JSON and Markdown.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from common import get_config
from common.adaptive import counts_for_fractions, relation_resample_matrix, thresholds_for_fractions
from common.benchmark import (BASELINE, BASELINE_FAST, CASCADE, Measurement, RunResult, expected_gflops,
                              markdown_report, parse_mixture, predicted_speedup, report_dict, static_config,
                              time_interleaved, write_report)
from common.resample import resample_grid_np
from common.thresholds.rule import exit_indices

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import benchmark as tool  # noqa: E402


def test_parse_mixture_and_counts():
    assert parse_mixture("0.6/0.25/0.15") == (0.6, 0.25, 0.15)
    for bad in ("0.6/0.3", "a/b", "-0.1/1.1"):
        with pytest.raises(ValueError):
            parse_mixture(bad)
    assert counts_for_fractions([0.6, 0.25, 0.15], 64).tolist() == [38, 16, 10]
    assert counts_for_fractions([1 / 3] * 3, 10).sum() == 10
    assert counts_for_fractions([0, 0, 1], 7).tolist() == [0, 0, 7]


@pytest.mark.parametrize("fractions", [[0.6, 0.25, 0.15], [1, 0, 0], [0, 0, 1], [0.5, 0, 0.5], [0, 0.7, 0.3]])
def test_thresholds_for_fractions_split_exactly(fractions):
    rng = np.random.default_rng(0)
    s = rng.uniform(0.1, 1.0, size=(3, 50))
    thresholds, counts, margin = thresholds_for_fractions(s, fractions)
    target = counts_for_fractions(fractions, 50)
    assert counts.tolist() == target.tolist()
    assert np.bincount(exit_indices(s, thresholds), minlength=3).tolist() == target.tolist()
    assert thresholds[-1] == -np.inf and margin > 0


def test_static_config_is_the_registered_backbone():
    cfg = get_config("dvt_t2t_vit_12")
    assert [static_config(cfg, k).name for k in range(3)] == ["t2t_vit_12_grid7", "t2t_vit_12_grid10", "t2t_vit_12"]
    assert static_config(get_config("dvt_deit_small")).name == "deit_small"
    tiny = static_config(get_config("dvt_tiny_deit_4exit"), 0)
    assert tiny.num_exits == 1 and not tiny.reuses and tiny.grids == (2,)


def test_predicted_speedup_matches_the_paper_counts():
    cascade, static = get_config("dvt_t2t_vit_12"), get_config("t2t_vit_12")
    # DESIGN.md §4: 0.4725 / 1.4625 / 3.4975 cumulative, static 1.7748 GFLOPs
    expected = 1.7748 / (0.6 * 0.4725 + 0.25 * 1.4625 + 0.15 * 3.4975)
    assert predicted_speedup(cascade, static, [60, 25, 15]) == pytest.approx(expected, rel=1e-3)
    assert expected_gflops(cascade, [0, 0, 5]) == pytest.approx(3.4975, rel=1e-3)


def test_relation_resample_matrix_equals_the_separable_resampling():
    rng = np.random.default_rng(0)
    s, t = 3, 5
    r = rng.normal(size=(2, 1 + s * s, 1 + s * s))
    m = relation_resample_matrix(s, t).astype(np.float64)
    # reference: cls row/column carried, patches resampled on both token axes (key axis, then query axis)
    def last(z):
        patches = resample_grid_np(z[..., 1:].reshape(*z.shape[:-1], s, s), s, t).reshape(*z.shape[:-1], t * t)
        return np.concatenate([z[..., :1], patches], axis=-1)
    expected = np.swapaxes(last(np.swapaxes(last(r), -1, -2)), -1, -2)
    np.testing.assert_allclose(m @ r @ m.T, expected, atol=1e-6)


def test_time_interleaved_rotates_and_counts():
    calls = []
    wall, cpu = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeat=3)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert {k: len(v) for k, v in wall.items()} == {k: len(v) for k, v in cpu.items()} == {"a": 3, "b": 3}


def test_report_json_and_markdown(tmp_path):
    cascade, static = get_config("dvt_t2t_vit_12"), get_config("t2t_vit_12")
    run = RunResult("torch", "cpu", cascade.name, static.name, 4, info={"threads": 1})
    run.measurements = [
        Measurement("static t2t_vit_12", "static", [10.0, 12.0, 11.0], 4, 1.7748, role=BASELINE,
                    cpu_times_ms=[9.0, 9.5, 9.2]),
        Measurement("static t2t_vit_12, fast kernels", "static", [9.0], 4, 1.7748, role=BASELINE_FAST, fast=True),
        Measurement("full cascade", "cascade", [20.0], 4, 3.4975, role=CASCADE),
        Measurement("adaptive 0.5/0.25/0.25", "adaptive", [8.0], 4, 1.2, fast=True, exit_counts=[2, 1, 1]),
        Measurement("adaptive 0/0/1, default kernels", "adaptive", [21.0], 4, 3.4975, fast=False,
                    exit_counts=[0, 0, 4]),
    ]
    assert run.measurements[0].median_ms == 11.0 and run.measurements[0].images_per_s == pytest.approx(4 / 0.011)
    report = report_dict([(run, cascade, static)], {"note": "unit test"})
    comp = report["runs"][0]["comparisons"]
    assert [c["baseline"] for c in comp] == ["static t2t_vit_12, fast kernels", "static t2t_vit_12"]
    assert comp[0]["measured_speedup"] == pytest.approx(9 / 8)
    (overhead,) = report["runs"][0]["overheads"]
    assert overhead["setting"] == "adaptive 0/0/1, default kernels"
    assert overhead["overhead"] == overhead["paired_overhead"] == pytest.approx(0.05)
    js, md = write_report(report, tmp_path / "out")
    assert json.loads(js.read_text()) == json.loads(json.dumps(report))
    assert md.read_text() == markdown_report(report) and "| adaptive 0.5/0.25/0.25 |" in md.read_text()


def _smoke(tmp_path, framework, extra=()):
    out = tmp_path / framework
    argv = ["--framework", framework, "--models", "dvt_tiny_deit_2exit", "--batch-sizes", "6", "--warmup", "0",
            "--repeat", "1", "--mixtures", "0.5/0.5", "--out", str(out), *extra]
    assert tool.main(argv) == 0
    report = json.loads((out / "benchmark.json").read_text())
    (run,) = report["runs"]
    settings = {m["setting"]: m for m in run["measurements"]}
    assert run["static_model"] == "dvt_tiny_deit_2exit_static_grid4"
    assert settings["adaptive 0.5/0.5"]["exit_counts"] == [3, 3]
    assert settings["adaptive 0/1"]["exit_counts"] == [0, 6]
    assert {"full cascade", "static dvt_tiny_deit_2exit_static_grid2", "static dvt_tiny_deit_2exit_static_grid4"} \
        <= set(settings)
    assert run["comparisons"] and run["overheads"]
    assert all(np.isfinite(c["ratio"]) for c in run["comparisons"])
    assert "# DVT throughput benchmark" in (out / "benchmark.md").read_text()
    return run


def test_benchmark_tool_smoke_torch(tmp_path):
    import torch
    threads = torch.get_num_threads()
    try:
        run = _smoke(tmp_path, "torch", ["--threads", "1", "--relations", "deferred,recompute,explicit"])
    finally:
        torch.set_num_threads(threads)
    assert run["info"]["threads"] == 1
    assert len(run["comparisons"]) == 8  # two mixtures x (fast kernels x 3 ways of handing relations on, default)
    settings = {m["setting"] for m in run["measurements"]}
    assert {"adaptive 0.5/0.5, relations recompute", "adaptive 0/1, relations explicit"} <= settings


def test_benchmark_tool_smoke_mindspore(tmp_path):
    run = _smoke(tmp_path, "mindspore", ["--kernels", "fast"])
    assert len(run["comparisons"]) == 2 and run["info"]["mode"] == "pynative"


def test_stage_variants_and_setting_filter(tmp_path):
    """--settings picks what is timed; a stage variant (here CUDA graphs, captured by the CPU stand-in) is
    compared with the static backbone run the same way, and its first call is reported apart."""
    import torch
    args = tool.parse_args(["--framework", "torch", "--models", "dvt_tiny_deit_2exit", "--batch-sizes", "6",
                            "--warmup", "0", "--repeat", "1", "--mixtures", "0.5/0.5", "--kernels", "fast",
                            "--settings", "static,adaptive", "--threads", "1"])
    args.cuda_graphs = True  # the tool asks for --device cuda; the stand-in capture runs the same plumbing
    threads = torch.get_num_threads()
    try:
        backend = tool.TorchBackend("cpu", 1, False)
        run, cascade, static = tool.bench_model(backend, "dvt_tiny_deit_2exit", 6, [(0.5, 0.5), (0.0, 1.0)], args,
                                                lambda msg: None)
    finally:
        torch.set_num_threads(threads)
    by_name = {m.setting: m for m in run.measurements}
    assert "full cascade" not in by_name and {m.kind for m in run.measurements} == {"static", "adaptive"}
    graphs = by_name["adaptive 0.5/0.5, cuda graphs"]
    assert graphs.variant == "cuda graphs" and graphs.first_call_s > 0 and graphs.exit_counts == [3, 3]
    baselines = {c["setting"]: c["baseline"] for c in run.comparisons(cascade, static)}
    static_fast = "static dvt_tiny_deit_2exit_static_grid4, fast kernels"
    assert baselines["adaptive 0.5/0.5, cuda graphs"] == static_fast + ", cuda graphs"
    assert baselines["adaptive 0.5/0.5"] == static_fast


@pytest.mark.slow
def test_benchmark_against_the_official_code(tmp_path):
    """--reference: the official cascade on our weights, interleaved with our full cascade."""
    from torch_impl.official import is_official_repo
    repo = Path("/work/.mirror/blackfeather-wang+Dynamic-Vision-Transformer/repo")
    if not is_official_repo(repo):
        pytest.skip("official DVT code not found")
    import torch
    threads = torch.get_num_threads()
    out = tmp_path / "ref"
    try:
        assert tool.main(["--framework", "torch", "--models", "dvt_t2t_vit_12", "--batch-sizes", "1", "--threads", "1",
                          "--warmup", "0", "--repeat", "1", "--settings", "cascade,reference", "--reference", str(repo),
                          "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    (run,) = json.loads((out / "benchmark.json").read_text())["runs"]
    ref = run["reference"]
    assert ref["setting"] == "full cascade" and ref["reference"] == "reference full cascade (official code)"
    assert ref["time_fraction"] > 0 and "takes" in (out / "benchmark.md").read_text()
    note = next(m["note"] for m in run["measurements"] if m["kind"] == "reference")
    assert float(note.split()[2]) <= 1e-5  # "logits within <diff> of ours"


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        tool.parse_args(["--framework", "jax"])
    with pytest.raises(SystemExit):
        tool.parse_args(["--kernels", "turbo"])
    for bad in (["--relations", "lazy"], ["--settings", "everything"], ["--cuda-graphs"],
                ["--reference", "/nonexistent/dvt"]):
        with pytest.raises(SystemExit):
            tool.parse_args(bad)
    with pytest.raises(ValueError, match="do not have 3 fractions"):
        tool.mixtures_for(3, "0.5/0.5")
    with pytest.raises(SystemExit) as exc:  # parse_args turns it into a usage error, exit status 2
        tool.parse_args(["--models", "dvt_tiny_deit", "--mixtures", "0.5/0.5"])
    assert exc.value.code == 2
