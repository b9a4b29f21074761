"""Machinery of the cross-framework parity suite: inputs, runners, comparisons, exit decisions, report.

Importable with either framework alone (or neither): torch and MindSpore are imported inside the
functions that need them. Every comparison goes through `compare_outputs` / `record`, which both
assert-ready numbers and feed the table `conftest.py` prints at the end of the session.

Tolerances are the issue's and are never loosened here; a failure means a cause to find.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
REPORT_PATH = ROOT / "outputs" / "parity_report.md"

# ---- tolerances (issue 5) -----------------------------------------------------------------------------
TOL_LOGITS = 1e-5  # per-exit logits, max |diff|, tiny configs
TOL_LOGITS_FULL = 2e-5  # per-exit logits, full-size configs
TOL_INTERMEDIATE = 1e-4  # attention logits, final features, reused context / relations, max |diff|
TOL_LOSS = 1e-5
TOL_GRAD_REL = 1e-4  # max |g_a - g_b| / max |g_b| per tensor
TOL_WEIGHTS = 1e-5  # parameters after one optimizer step, max |diff|
TOL_GOLDEN = 1e-5  # each framework alone against the stored torch logits



def parity_all() -> bool:
    """DVT_PARITY_ALL=1: also run the full-size forward check of every non-reference config."""
    return os.environ.get("DVT_PARITY_ALL", "") not in ("", "0")


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def need(framework: str):
    """pytest.importorskip with the reason a user reads on a one-framework machine."""
    import pytest
    reasons = {"torch": "PyTorch is not installed: the torch half and cross-framework checks are skipped "
                        "(MindSpore alone is checked against the stored golden logits)",
               "mindspore": "MindSpore is not installed: the MindSpore half and cross-framework checks are "
                            "skipped (PyTorch alone is checked against the stored golden logits)"}
    return pytest.importorskip(framework, reason=reasons[framework])


def seed_of(name: str, salt: str = "") -> int:
    """A fixed seed per config (and purpose), stable across runs and machines."""
    return zlib.crc32(f"{name}:{salt}".encode()) % (2 ** 31)


# ---- inputs ---------------------------------------------------------------------------------------------
STRUCTURED = ("zeros", "ramp", "checkerboard", "channels", "bright")


def structured_image(kind: str, chans: int, size: int) -> np.ndarray:
    """Normalised-space images that random noise does not produce (flat, smooth, periodic, saturated)."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    if kind == "zeros":
        img = np.zeros((chans, size, size))
    elif kind == "ramp":
        img = np.stack([2.0 * xx, 2.0 * yy, xx * yy][:chans])
    elif kind == "checkerboard":
        cell = max(size // 8, 1)
        board = ((np.arange(size)[:, None] // cell + np.arange(size)[None, :] // cell) % 2) * 2.0 - 1.0
        img = np.stack([board, -board, board][:chans])
    elif kind == "channels":
        img = np.stack([np.full((size, size), v) for v in (1.5, -1.0, 0.25)][:chans])
    elif kind == "bright":  # far outside the normalised range: large logits, peaked softmax
        img = 4.0 * np.sign(np.sin(6 * xx) * np.cos(5 * yy))[None].repeat(chans, 0)
    else:
        raise ValueError(kind)
    return img.astype(np.float32)


def images(cfg, n_random: int, structured=STRUCTURED, seed: int = 0) -> np.ndarray:
    """(n_random + len(structured), C, H, W) float32: N(0,1) images, then the structured ones."""
    rng = np.random.default_rng(seed)
    rand = rng.standard_normal((n_random, cfg.in_chans, cfg.img_size, cfg.img_size)).astype(np.float32)
    extra = [structured_image(k, cfg.in_chans, cfg.img_size) for k in structured]
    return np.concatenate([rand] + ([np.stack(extra)] if extra else []), axis=0)


def noise(shape, rng: np.random.Generator, std: float = 0.02) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


# ---- models ---------------------------------------------------------------------------------------------
def torch_model(name: str, seed: int, perturb: bool = True, **overrides):
    """The registry's torch model built under a fixed seed, every state-dict tensor then moved by N(0, 0.02):
    zero biases and unit LayerNorm weights would hide a swapped or dropped bias in a conversion. The state
    dict (parameters and the frozen buffers, in module order) is what MindSpore holds as parameters."""
    import torch
    import torch_impl
    torch.manual_seed(seed)
    model = torch_impl.create_model(name, **overrides).eval()
    if perturb:
        rng = np.random.default_rng(seed)
        with torch.no_grad():
            for p in model.state_dict(keep_vars=True).values():
                p.add_(torch.from_numpy(noise(tuple(p.shape), rng)))
    return model


def ms_model(name: str, seed: int, perturb: bool = True, **overrides):
    """The registry's MindSpore model initialised by MindSpore under a fixed seed (then perturbed)."""
    import mindspore as ms
    import ms_impl
    ms.set_seed(seed)
    model = ms_impl.create_model(name, **overrides)
    if perturb:
        rng = np.random.default_rng(seed)
        for _, p in model.parameters_and_names():
            p.set_data(ms.Tensor(p.asnumpy() + noise(tuple(p.shape), rng)))
    model.set_train(False)
    return model


def torch_state(model) -> dict:
    """canonical name -> numpy copy of every entry of a torch model's state dict."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def ms_state(model) -> dict:
    """canonical name -> numpy copy of every parameter of a MindSpore model."""
    from common.naming import rename
    return rename({n: p.asnumpy().copy() for n, p in model.parameters_and_names()}, model.config,
                  "mindspore", "canonical")


def _flatten(outs, to_np) -> dict:
    """ExitOutputs -> {(exit, quantity): array or list of per-block arrays}."""
    flat = {}
    for k, o in enumerate(outs):
        flat[(k, "logits")] = to_np(o.logits)
        flat[(k, "features")] = to_np(o.features)
        flat[(k, "attn_logits")] = [to_np(r) for r in o.relations]
        if o.reused_context is not None:
            flat[(k, "context")] = [to_np(c) for c in o.reused_context]
        if o.reused_relations is not None:
            flat[(k, "reused_relations")] = [to_np(r) for r in o.reused_relations]
    return flat


def torch_outputs(model, x: np.ndarray) -> dict:
    import torch
    model.eval()
    with torch.no_grad():
        outs = model.forward_exits(torch.from_numpy(x))
    return _flatten(outs, lambda t: t.detach().cpu().numpy())


def ms_outputs(model, x: np.ndarray) -> dict:
    import mindspore as ms
    model.set_train(False)
    outs = model.forward_exits(ms.Tensor(x))
    return _flatten(outs, lambda t: t.asnumpy())


def logits_of(flat: dict) -> list:
    return [flat[(k, "logits")] for k in range(1 + max(k for k, _ in flat))]


# ---- comparisons ----------------------------------------------------------------------------------------
def max_diffs(a, b) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b|) over arrays or lists of arrays (b is the reference)."""
    if isinstance(a, (list, tuple)):
        pairs = list(zip(a, b))
        if not pairs:
            return 0.0, 0.0
        diff = max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in pairs)
        scale = max(float(np.max(np.abs(y))) for _, y in pairs)
    else:
        diff = float(np.max(np.abs(a.astype(np.float64) - b)))
        scale = float(np.max(np.abs(b)))
    return diff, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


@dataclass
class Row:
    config: str
    check: str  # e.g. 'torch->ms (CLI)', 'golden: torch', 'train step'
    exit: str  # '0', '1', ... ('all' for exit decisions, '-' for whole-model numbers)
    values: dict = field(default_factory=dict)  # column -> (max_abs, max_rel) or text
    ok: bool = True
    skipped: str = ""  # why this check did not run here (the row still lists the config and exit)


REPORT: list[Row] = []


def record(row: Row) -> Row:
    REPORT.append(row)
    return row


def rows_to_json(rows: list[Row]) -> str:
    """Rows as JSON (how pytest-xdist workers hand their rows to the controller, conftest.py)."""
    return json.dumps([dataclasses.asdict(r) for r in rows])


def rows_from_json(text: str) -> list[Row]:
    return [Row(**{**d, "values": {k: tuple(v) if isinstance(v, list) else v for k, v in d["values"].items()}})
            for d in json.loads(text)]


def compare_outputs(config: str, check: str, ref: dict, got: dict, logits_tol: float,
                    inter_tol: float = TOL_INTERMEDIATE) -> list[str]:
    """Compare every exit's logits and intermediates; record one row per exit; return the failures."""
    failures = []
    exits = sorted({k for k, _ in ref})
    for k in exits:
        row = Row(config, check, str(k))
        for quantity in ("logits", "attn_logits", "features", "context", "reused_relations"):
            if (k, quantity) not in ref:
                continue
            if (k, quantity) not in got:
                failures.append(f"exit {k}: {quantity} missing on one side")
                continue
            abs_d, rel_d = max_diffs(got[(k, quantity)], ref[(k, quantity)])
            tol = logits_tol if quantity == "logits" else inter_tol
            row.values[quantity] = (abs_d, rel_d)
            if not abs_d <= tol:
                row.ok = False
                failures.append(f"{config} exit {k} {quantity}: max |diff| {abs_d:.3e} > {tol:g}")
        ref_arg, got_arg = _decided_argmax(ref[(k, "logits")], got[(k, "logits")], logits_tol)
        argmax_same = np.array_equal(ref_arg, got_arg)
        ties = ref[(k, "logits")].shape[0] - ref_arg.shape[0]
        row.values["argmax"] = ("same" if argmax_same else "DIFFERENT") + (f" ({ties} near-ties not compared)"
                                                                            if ties else "")
        if not argmax_same:
            row.ok = False
            failures.append(f"{config} exit {k}: argmax differs")
        record(row)
    return failures


def _decided_argmax(ref: np.ndarray, got: np.ndarray, tol: float):
    """Argmax of both, over samples whose top-2 gap in `ref` exceeds 2*tol: a closer race is not decided
    at this tolerance (the report counts such samples; there were none in the recorded runs)."""
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * tol
    return ref[decided].argmax(-1), got[decided].argmax(-1)


def threshold_sweep(scores: np.ndarray, margin: float) -> list[np.ndarray]:
    """Thresholds (K-1 values each) that realise every distinct exit pattern of these scores.

    Each threshold sits halfway between two consecutive distinct confidences (and below / above all of
    them), skipping gaps narrower than 2 * margin: with logits within `margin` of each other, confidences
    (max softmax) differ by less than `margin`, so no decision may flip at these thresholds. Used for all
    exits at once, and per exit with the other exits closed (+inf) or open (0)."""
    k_exits = scores.shape[0]
    values = np.unique(scores[:-1].ravel())
    mids = [(a + b) / 2 for a, b in zip(values[:-1], values[1:]) if b - a > 2 * margin]
    candidates = [0.0, float(values.min()) - 1e-3, float(values.max()) + 1e-3, 1.0 + 1e-9] + mids
    sweep = [np.full(k_exits - 1, t) for t in candidates]
    for k in range(k_exits - 1):
        for t in candidates[:: max(1, len(candidates) // 16)]:
            for other in (np.inf, 0.0):
                th = np.full(k_exits - 1, other)
                th[k] = t
                sweep.append(th)
    return sweep


def compare_decisions(config: str, check: str, ref_logits: list, got_logits: list, margin: float) -> list[str]:
    """Exit decisions (common.thresholds rule, float64 max-softmax from each framework's logits) for a
    sweep of thresholds: must be identical; one row."""
    from common.thresholds import exit_indices, max_softmax
    ref_scores = np.stack([max_softmax(z) for z in ref_logits])
    got_scores = np.stack([max_softmax(z) for z in got_logits])
    if ref_scores.shape[0] < 2:
        return []
    sweep = threshold_sweep(ref_scores, margin)
    differing = sum(int(np.any(exit_indices(ref_scores, t) != exit_indices(got_scores, t))) for t in sweep)
    conf_diff = float(np.max(np.abs(ref_scores - got_scores)))
    record(Row(config, check, "all", {"decisions": f"{len(sweep) - differing}/{len(sweep)} same",
                                       "confidence": (conf_diff, conf_diff)}, ok=differing == 0))
    return [f"{config}: exit decisions differ for {differing} of {len(sweep)} thresholds"] if differing else []


# ---- the converter, in-process with real files -------------------------------------------------------
_CLI = None


def convert_cli(*args) -> tuple[int, str, str]:
    """Run tools/convert_weights.py's main() with these arguments: (status, stdout, stderr)."""
    global _CLI
    if _CLI is None:
        spec = importlib.util.spec_from_file_location("convert_weights", ROOT / "tools" / "convert_weights.py")
        _CLI = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_CLI)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = _CLI.main([str(a) for a in args])
    return status, out.getvalue(), err.getvalue()


def convert_ok(*args) -> str:
    status, out, err = convert_cli(*args)
    assert status == 0, f"convert_weights {' '.join(map(str, args))} failed ({status}):\n{err}"
    return out


# ---- report ---------------------------------------------------------------------------------------------
COLUMNS = (("logits", "logits"), ("attn_logits", "attn logits"), ("features", "features"),
           ("context", "reused ctx"), ("reused_relations", "reused rel"))


def _fmt(value) -> str:
    if isinstance(value, tuple):
        return f"{value[0]:.1e} / {value[1]:.1e}"
    return str(value)


def _status(r: Row) -> str:
    return f"skipped: {r.skipped}" if r.skipped else ("yes" if r.ok else "NO")


def report_markdown(rows: list[Row] | None = None) -> str:
    rows = REPORT if rows is None else rows
    if not rows:
        return ""
    lines = ["# Cross-framework parity report", "",
             "Cells: max abs diff / that diff relative to the reference's max abs value (reference: torch, or "
             "MindSpore for ms->torch, or the stored golden logits). Limits: logits 1e-5 (full size 2e-5); "
             "attention logits, features, reused context and relations 1e-4; loss 1e-5; gradients 1e-4 "
             "relative; updated weights 1e-5. 'all': exit decisions over a threshold sweep.", ""]
    forward = [r for r in rows if r.exit != "-"]
    other = [r for r in rows if r.exit == "-"]
    if forward:
        lines += ["| config | check | exit | logits | attn logits | features | reused ctx | reused rel | "
                  "argmax / decisions | ok |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(forward, key=lambda r: (r.config, r.check, r.exit)):
            cells = [_fmt(r.values[c]) if c in r.values else "" for c, _ in COLUMNS]
            if r.exit == "all":
                cells = [_fmt(r.values.get("confidence", "")) + " (confidence)", "", "", "", ""]
            tail = r.values.get("argmax", r.values.get("decisions", ""))
            lines.append(f"| {r.config} | {r.check} | {r.exit} | " + " | ".join(cells) + f" | {tail} | {_status(r)} |")
    if other:
        lines += ["", "| config | check | quantity | value | ok |", "|---|---|---|---|---|"]
        for r in sorted(other, key=lambda r: (r.config, r.check)):
            for key, value in r.values.items():
                lines.append(f"| {r.config} | {r.check} | {key} | {_fmt(value)} | {_status(r)} |")
    counts = (sum(1 for r in rows if not r.skipped and r.ok), sum(1 for r in rows if not r.skipped and not r.ok),
              sum(1 for r in rows if r.skipped))
    configs = sorted({r.config for r in rows if not r.config.startswith("(")})
    lines += ["", f"{len(configs)} configs; rows within limits: {counts[0]}, outside: {counts[1]}, "
                  f"not run here: {counts[2]}."]
    return "\n".join(lines) + "\n"
