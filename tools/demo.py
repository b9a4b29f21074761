#!/usr/bin/env python
"""The demo behind `make demo`: one DVT, trained in PyTorch, run in MindSpore with the same answers.

    python tools/demo.py [--output outputs/demo] [--fresh] [--repeat 2]

1. trains the default tiny DVT on the embedded digits (`python torch_impl/train.py`, about 2 minutes);
2. converts its checkpoint to a MindSpore `.ckpt` (`python tools/convert_weights.py`);
3. evaluates that `.ckpt` in MindSpore (`python ms_impl/evaluate.py`) and checks that every exit's top-1
   equals the PyTorch one (and how far the per-exit logits are apart);
4. runs real early exit (`forward_adaptive` / `ms_impl.models.adaptive_forward`) on the test split in both
   frameworks at a few budgets of the solved threshold curve: exit decisions must agree with each other and
   with the offline rule, and each setting is timed against the static backbone at the finest grid;
5. prints one table and writes `demo.json` / `demo.md` (atomically) next to the plots.

A second demo in the same --output reuses the finished training (`--resume auto` only re-evaluates it; one that
died continues from its last epoch), and replaces only the demo's own MindSpore evaluation (`--force`), table
and plots, saying so; `--fresh` trains again, replacing the demo's training run. Exit status 1 when the
frameworks disagree, 2 on a failed step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from common.quiet_logs import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # before MindSpore is imported: errors only unless GLOG_v is set

from common.adaptive import offline_exits  # noqa: E402
from common.atomic import atomic_write_text  # noqa: E402
from common.benchmark import expected_gflops, predicted_speedup, static_config, time_interleaved  # noqa: E402
from common.config import DVTConfig  # noqa: E402
from common.flops import cumulative_gflops  # noqa: E402
from common.thresholds.curve import ThresholdCurve  # noqa: E402
from common.thresholds.outputs import load_exit_outputs  # noqa: E402
from common.training import load_summary, run_files  # noqa: E402

LOGIT_TOLERANCE = 1e-5  # fp32 per-exit logits, tiny configs (parity/README.md)


class StepFailed(RuntimeError):
    pass


def run_step(title: str, argv: list[str]) -> None:
    """Run one of the user commands as a user would, output streamed; a non-zero status stops the demo."""
    shown = " ".join(str(a) for a in argv[1:])
    print(f"\n=== {title}\n$ python {shown}", flush=True)
    start = time.perf_counter()
    status = subprocess.run([str(a) for a in argv], cwd=ROOT).returncode
    if status != 0:
        raise StepFailed(f"{title}: `python {shown}` exited with status {status}")
    print(f"({title}: {time.perf_counter() - start:.0f} s)", flush=True)


def pick_budgets(curve: ThresholdCurve, summary: dict, count: int) -> list[float]:
    """`count` budgets along the curve: its cheapest point, points up to the one that matches the last exit's
    accuracy, and one halfway from there to the curve's end (more GFLOPs, later exits, no better)."""
    budgets = np.asarray(curve.budgets, dtype=np.float64)
    match = summary["highlights"][curve.solver].get("matches_last_exit_gflops") or float(budgets[-1])
    hi = int(np.searchsorted(budgets, match * (1 + 1e-9)))
    hi = min(max(hi, 1), len(budgets) - 1)
    picks = list(np.linspace(0, hi, max(count - 1, 1)).round().astype(int)) + [(hi + len(budgets) - 1) // 2]
    return [float(budgets[i]) for i in sorted(set(picks))[:max(count, 1)]]


# ---- the two frameworks ------------------------------------------------------------------------
class TorchSide:
    name = "PyTorch"

    def __init__(self, checkpoint: Path, cfg: DVTConfig):
        import torch

        from torch_impl.models import DVT, create_model
        self.torch = torch
        torch.manual_seed(0)
        self.model = create_model(cfg.name, checkpoint_path=str(checkpoint)).eval()
        self.static = DVT(static_config(cfg)).eval()  # timing only: cost does not depend on the weights

    def tensor(self, x: np.ndarray):
        return self.torch.from_numpy(x)

    def adaptive(self, x, thresholds):
        with self.torch.inference_mode():
            res = self.model.forward_adaptive(x, thresholds)
        return res.logits.numpy(), res.exit_index.numpy()

    def cascade(self, x) -> np.ndarray:
        with self.torch.inference_mode():
            return np.stack([o.numpy() for o in self.model(x)])

    def timers(self, x, thresholds_by_label: dict) -> dict:
        torch = self.torch

        def timed(fn):
            def call():
                with torch.inference_mode():
                    return fn()
            return call
        settings = {"static": timed(lambda: self.static(x)), "cascade": timed(lambda: self.model(x))}
        for label, t in thresholds_by_label.items():
            settings[label] = timed(lambda t=t: self.model.forward_adaptive(x, t))
        return settings


class MindSporeSide:
    name = "MindSpore"

    def __init__(self, checkpoint: Path, cfg: DVTConfig):
        import mindspore as ms

        import ms_impl
        from ms_impl.models import DVT, adaptive_forward
        ms_impl.configure(device="cpu", mode="pynative")
        self.ms, self.adaptive_forward = ms, adaptive_forward
        ms.set_seed(0)
        self.model = ms_impl.create_model(cfg.name, checkpoint_path=str(checkpoint))
        self.model.set_train(False)
        self.static = DVT(static_config(cfg))
        self.static.set_train(False)

    def tensor(self, x: np.ndarray):
        return self.ms.Tensor(x)

    def adaptive(self, x, thresholds):
        res = self.adaptive_forward(self.model, x, thresholds)
        return res.logits.asnumpy(), res.exit_index.asnumpy()

    def cascade(self, x) -> np.ndarray:
        return np.stack([o.asnumpy() for o in self.model(x)])

    def timers(self, x, thresholds_by_label: dict) -> dict:
        settings = {"static": lambda: self.static(x), "cascade": lambda: self.model(x)}
        for label, t in thresholds_by_label.items():
            settings[label] = lambda t=t: self.adaptive_forward(self.model, x, t)
        return settings


def sync_ms(out):
    """Block until a MindSpore result is computed (PYNATIVE runs asynchronously)."""
    first = out[0] if isinstance(out, (tuple, list)) else out.logits if hasattr(out, "logits") else out
    first.asnumpy()


# ---- the steps ---------------------------------------------------------------------------------
def test_images(cfg: DVTConfig) -> tuple[np.ndarray, np.ndarray]:
    """The test split through the evaluation transform, as one float32 batch (the same array for both)."""
    from common.training import resolve_splits
    from torch_impl.data import SplitDataset, eval_transform
    split = resolve_splits("digits", "", cfg.img_size).test
    data = SplitDataset(split, eval_transform(cfg), "test")
    images = np.stack([data[i][0].numpy() for i in range(len(data))]).astype(np.float32)
    return images, np.asarray(split.labels, dtype=np.int64)


def compare_evaluations(torch_dir: Path, ms_dir: Path) -> dict:
    ts, ms = load_summary(torch_dir / "summary.json"), load_summary(ms_dir / "summary.json")
    out = {"top1": {"torch": ts["top1"], "mindspore": ms["top1"]}, "gflops": ts["gflops"]}
    diffs = []
    for split in ("calib", "test"):
        a = load_exit_outputs(torch_dir / f"{split}_outputs.npz")
        b = load_exit_outputs(ms_dir / f"{split}_outputs.npz")
        if not np.array_equal(a.labels, b.labels):
            raise StepFailed(f"the {split} split's labels differ between the frameworks' evaluations")
        diffs.append(float(np.abs(a.logits - b.logits).max()))
    # Each framework's own input pipeline: the normalisation rounds differently (up to 1 ulp per pixel),
    # so these logits differ a little more than the model's parity; that is checked on one input below.
    out["max_logit_diff_pipelines"] = max(diffs)
    out["equal_top1"] = ts["top1"] == ms["top1"]
    return out


def cascade_parity(sides, images: np.ndarray) -> float:
    """Largest difference of the per-exit logits of the two frameworks on the very same input array."""
    logits = [side.cascade(side.tensor(images)) for side in sides]
    return float(np.abs(logits[0] - logits[1]).max())


def adaptive_runs(sides, cfg: DVTConfig, curve: ThresholdCurve, budgets, images, labels, test_logits, repeat):
    """Per budget: thresholds, offline exits, each framework's online exits / accuracy / speedup."""
    static_gflops = cumulative_gflops(static_config(cfg))[-1]
    rows = []
    for budget in budgets:
        t = curve.thresholds_for_budget(budget)
        offline = offline_exits(test_logits, t, curve.criterion)
        counts = np.bincount(offline, minlength=cfg.num_exits)
        rows.append({"budget_gflops": budget, "thresholds": [float(v) for v in t[:-1]],
                     "exit_counts": counts.tolist(), "gflops_per_image": expected_gflops(cfg, counts),
                     "predicted_speedup": predicted_speedup(cfg, static_config(cfg), counts), "frameworks": {}})
    for side in sides:
        x = side.tensor(images)
        for row in rows:
            logits, exits = side.adaptive(x, np.asarray(row["thresholds"]))
            offline = offline_exits(test_logits, np.asarray(row["thresholds"]), curve.criterion)
            row["frameworks"][side.name] = {"exits_equal_offline": bool(np.array_equal(exits, offline)),
                                            "accuracy": float((logits.argmax(-1) == labels).mean()),
                                            "exits": exits, "logits": logits}
        print(f"timing {side.name}: static backbone, full cascade and {len(rows)} budgets, "
              f"{repeat} rounds of the {len(labels)}-image test split", flush=True)
        settings = side.timers(x, {f"b{i}": np.asarray(r["thresholds"]) for i, r in enumerate(rows)})
        wall, _ = time_interleaved(settings, warmup=1, repeat=repeat,
                                   sync=sync_ms if side.name == "MindSpore" else (lambda out: None))
        med = {k: float(np.median(v)) for k, v in wall.items()}
        for i, row in enumerate(rows):
            fw = row["frameworks"][side.name]
            fw.update(ms=med[f"b{i}"], static_ms=med["static"], cascade_ms=med["cascade"],
                      measured_speedup=med["static"] / med[f"b{i}"],
                      speedup_over_cascade=med["cascade"] / med[f"b{i}"])
    for row in rows:  # the exits of both frameworks must agree sample by sample
        exits = [fw.pop("exits") for fw in row["frameworks"].values()]
        logits = [fw.pop("logits") for fw in row["frameworks"].values()]
        row["frameworks_agree"] = all(np.array_equal(exits[0], e) for e in exits[1:])
        row["max_logit_diff"] = max(float(np.abs(logits[0] - lg).max()) for lg in logits[1:])
    return rows, static_gflops


def format_report(cfg: DVTConfig, evals: dict, rows: list, static_gflops: float, plots: list[Path]) -> str:
    lines = [f"# DVT demo: {cfg.name}, trained in PyTorch, evaluated in both frameworks", "",
             "| exit | grid | cumulative GFLOPs | PyTorch test top-1 % | MindSpore test top-1 % |",
             "|---:|---:|---:|---:|---:|"]
    for k, ex in enumerate(cfg.exits):
        lines.append(f"| {k + 1} | {ex.grid}x{ex.grid} | {evals['gflops'][k]:.5f} | "
                     f"{100 * evals['top1']['torch']['test'][k]:.2f} | "
                     f"{100 * evals['top1']['mindspore']['test'][k]:.2f} |")
    lines += ["", f"Per-exit top-1 equal on calibration and test: {'yes' if evals['equal_top1'] else 'NO'}. "
              f"Per-exit logits on the same input: largest difference {evals['max_logit_diff']:.2e} "
              f"(tolerance {LOGIT_TOLERANCE:g}); through each framework's own input pipeline "
              f"{evals['max_logit_diff_pipelines']:.2e} (the normalisation rounds differently by up to 1 ulp).", "",
              f"Early exit on the test split (static backbone at the finest grid: {static_gflops:.5f} GFLOPs). "
              "Speedups are measured against that backbone in the same framework, and in brackets against the full "
              "cascade (every exit on every sample, what the reference code runs); 'pred.' is the FLOPs ratio.", "",
              "| budget GFLOPs | thresholds | exits (1/2/...) | GFLOPs/img | pred. speedup | "
              "PyTorch top-1 % | PyTorch speedup (vs cascade) | MindSpore top-1 % | MindSpore speedup (vs cascade) | "
              "frameworks agree |", "|---:|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        fws = r["frameworks"]
        cells = []
        for name in ("PyTorch", "MindSpore"):
            fw = fws.get(name)
            cells += ["-", "-"] if fw is None else [f"{100 * fw['accuracy']:.2f}", f"{fw['measured_speedup']:.2f}x "
                                                   f"({fw['speedup_over_cascade']:.2f}x)"]
        agree = r["frameworks_agree"] and r["max_logit_diff"] <= LOGIT_TOLERANCE and all(
            fw["exits_equal_offline"] for fw in fws.values())
        lines.append(f"| {r['budget_gflops']:.5f} | {', '.join(f'{v:.4f}' for v in r['thresholds'])} | "
                     f"{'/'.join(str(c) for c in r['exit_counts'])} | {r['gflops_per_image']:.5f} | "
                     f"{r['predicted_speedup']:.2f}x | {' | '.join(cells)} | {'yes' if agree else 'NO'} |")
    lines += ["", "A model this small (0.01 GFLOPs) is dominated by per-call overhead, so measured speedups trail the "
              "FLOPs ratio here; `python tools/benchmark.py` measures the reference models.", "", "Plots:"]
    lines += [f"- {p}" for p in plots]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--output", default="outputs/demo",
                   help="folder for the runs, the table and the plots; a second demo reuses its training and "
                        "replaces its own evaluation, table and plots there (nothing else)")
    p.add_argument("--fresh", action="store_true", help="train from scratch even if a finished run is there")
    p.add_argument("--budgets", type=int, default=3, help="how many budgets of the threshold curve to run")
    p.add_argument("--repeat", type=int, default=2, help="timed rounds per setting (medians)")
    p.add_argument("--train-args", default="", help="extra flags for torch_impl/train.py (quoted)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = (ROOT / args.output) if not os.path.isabs(args.output) else Path(args.output)
    torch_dir, ms_dir = out / "torch", out / "mindspore"
    py = sys.executable
    started = time.perf_counter()
    try:
        train = [py, ROOT / "torch_impl" / "train.py", "--output", torch_dir] + args.train_args.split()
        previous = torch_dir.is_dir() and any(torch_dir.iterdir())
        if (torch_dir / run_files("torch")["train_state"]).is_file() and not args.fresh:
            train += ["--resume", "auto"]  # a finished run only re-evaluates; an interrupted one continues
            print(f"reusing the previous demo's training in {torch_dir} (--fresh trains again)", flush=True)
        elif previous:
            train += ["--force"]
            print(f"replacing the previous demo's training in {torch_dir}", flush=True)
        run_step("1/5 train the default DVT in PyTorch", train)
        ckpt = ms_dir / "checkpoint.ckpt"
        ms_dir.mkdir(parents=True, exist_ok=True)
        run_step("2/5 convert the checkpoint to MindSpore",
                 [py, ROOT / "tools" / "convert_weights.py", torch_dir / "checkpoint.pth", ckpt, "--force"])
        evaluate = [py, ROOT / "ms_impl" / "evaluate.py", "--checkpoint", ckpt, "--output", ms_dir]
        if (ms_dir / run_files("mindspore")["summary"]).is_file():
            evaluate.append("--force")
            print(f"replacing the previous demo's MindSpore evaluation in {ms_dir}", flush=True)
        run_step("3/5 evaluate the converted checkpoint in MindSpore", evaluate)
        evals = compare_evaluations(torch_dir, ms_dir)

        print("\n=== 4/5 early exit in both frameworks", flush=True)
        step4 = time.perf_counter()
        summary = load_summary(torch_dir / "summary.json")
        cfg = DVTConfig.from_dict(json.loads((torch_dir / run_files("torch")["config"]).read_text()))
        curve = ThresholdCurve.load(torch_dir)  # the run's default solver, as forward_adaptive users get it
        images, labels = test_images(cfg)
        test = load_exit_outputs(torch_dir / "test_outputs.npz")
        if not np.array_equal(test.labels, labels):
            raise StepFailed("the demo's test batch is not the training run's test split")
        sides = [TorchSide(torch_dir / "checkpoint.pth", cfg), MindSporeSide(ckpt, cfg)]
        evals["max_logit_diff"] = cascade_parity(sides, images)
        rows, static_gflops = adaptive_runs(sides, cfg, curve, pick_budgets(curve, summary, args.budgets),
                                            images, labels, test.logits, args.repeat)
        print(f"(4/5 early exit in both frameworks: {time.perf_counter() - step4:.0f} s)", flush=True)
    except StepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    print("\n=== 5/5 summary", flush=True)
    plots = [torch_dir / p for p in run_files("torch")["plots"]] + [ms_dir / p for p in run_files("mindspore")["plots"]]
    report = format_report(cfg, evals, rows, static_gflops, [p for p in plots if p.is_file()])
    atomic_write_text(out / "demo.md", report)
    atomic_write_text(out / "demo.json", json.dumps({"model": cfg.name, "evaluation": evals, "early_exit": rows,
                                                     "static_gflops": static_gflops}, indent=1) + "\n")
    print(report)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; table in {out / 'demo.md'}")
    ok = evals["equal_top1"] and evals["max_logit_diff"] <= LOGIT_TOLERANCE and all(
        r["frameworks_agree"] and r["max_logit_diff"] <= LOGIT_TOLERANCE and
        all(fw["exits_equal_offline"] for fw in r["frameworks"].values()) for r in rows)
    if not ok:
        print("error: the frameworks disagree (see the table above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
