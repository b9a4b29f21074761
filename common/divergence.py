"""Where two runs of one DVT diverge: per-stage margins, the first stage past tolerance, top-1 and exit agreement.

    stages_a = torch_impl.stages.capture_stages(model_a, images)      # or ms_impl.stages, same names
    stages_b = ms_impl.stages.capture_stages(model_b, images)
    result = compare_stages(stages_a, stages_b, cfg, atol=1e-5)
    result["first_divergence"], result["exits"], result["exit_decisions"]

The two runs may be two frameworks, two checkpoints (before / after fine-tuning) or two precisions; A is
the reference. Stages, in the order the cascade computes them (`stage_names`): per exit the tokenizer's
patch tokens, the reused relation maps (L, added to each block's attention logits), then per block its
attention logits (reused part included), the reused context concatenated into its MLP input, its output
tokens; the final norm's tokens and the head's logits.

Per stage: max |A - B|; the relative margin max |A - B| / max |A| (relative to the stage's scale: element
ratios blow up where A is near zero); cosine similarity and the fraction of elements within `atol`
(TroubleShooter's definitions, computed here in float64: importing TroubleShooter imports both torch and
MindSpore, and its cosine runs in the tensors' own dtype); mean |A - B|. A stage
diverges when max |A - B| > atol x max(1, max |A|): absolute below unit scale, relative above, so attention
logits of size 30 are held to the same number of significant digits as logits of size 3. Written out
because no library knows DVT's stages or its exit rule (see tools/compare.py for what TroubleShooter and
msprobe do and do not cover).
"""
from __future__ import annotations

import math

import numpy as np

from .config import DVTConfig
from .thresholds.rule import exit_indices
from .thresholds.scores import max_softmax

SWEEP = tuple(round(t, 2) for t in np.arange(0.05, 1.0, 0.05))  # fixed part of the exit-threshold sweep


def stage_name(exit_index: int, kind: str, block: int | None = None) -> str:
    """'exit1.block3.attn_logits', 'exit0.tokenizer', ...: the one spelling both frameworks use."""
    return f"exit{exit_index}.{kind}" if block is None else f"exit{exit_index}.block{block}.{kind}"


def stage_names(cfg: DVTConfig) -> list[str]:
    """Every stage of `cfg`, in the order the cascade computes them."""
    names = []
    for k in range(cfg.num_exits):
        names.append(stage_name(k, "tokenizer"))
        if cfg.uses_relation_reuse(k):
            names += [stage_name(k, "reused_relations", i) for i in range(cfg.depth)]
        for i in range(cfg.depth):
            names.append(stage_name(k, "attn_logits", i))
            if cfg.uses_feature_reuse(k):
                names.append(stage_name(k, "reused_context", i))
            names.append(stage_name(k, "output", i))
        names += [stage_name(k, "norm"), stage_name(k, "head")]
    return names


def order_stages(found: dict, cfg: DVTConfig) -> dict:
    """`found` (stage name -> array, any order) in `stage_names` order; KeyError naming what is missing."""
    names = stage_names(cfg)
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"stages not captured: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return {n: found[n] for n in names}


def stage_metrics(a: np.ndarray, b: np.ndarray, atol: float) -> dict:
    """Margins of one stage (A the reference), computed in float64."""
    if a.shape != b.shape:
        return {"shape": list(a.shape), "shape_b": list(b.shape), "diverged": True,
                "max_abs": math.inf, "max_rel": math.inf, "mean_abs": math.inf, "cosine": math.nan,
                "match_ratio": 0.0}
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(a64 - b64)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(a64).max()) if a64.size else 0.0
    # TroubleShooter's definitions (migrator.diff_handler.cal_algorithm with rtol 0: the fraction of elements
    # within atol; cal_cosine_sim), in float64; tests check them against TroubleShooter on the same tensors.
    match_ratio = float(np.mean(diff <= atol)) if diff.size else 1.0
    norm = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    cosine = float(a64.ravel() @ b64.ravel() / norm) if norm else (1.0 if np.allclose(a64, b64) else 0.0)
    finite = bool(np.isfinite(a64).all() and np.isfinite(b64).all())
    return {"shape": list(a.shape), "max_abs": max_abs,
            "max_rel": max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf),
            "mean_abs": float(diff.mean()) if diff.size else 0.0, "cosine": float(cosine),
            "match_ratio": float(match_ratio), "scale": scale,
            "diverged": (not finite) or not max_abs <= atol * max(1.0, scale)}


def threshold_sweep(scores_a: np.ndarray, guard: float = 0.0) -> list[float]:
    """One threshold for every exit before the last: SWEEP, plus a threshold between two consecutive distinct
    confidences of A at each decile. Thresholds within `guard` of one of A's confidences are left out: there a
    difference below the tolerance may flip a decision, which says nothing about the models."""
    values = np.unique(scores_a[:-1].ravel()) if scores_a.shape[0] > 1 else np.zeros(0)
    candidates = set(SWEEP)
    for q in np.linspace(0.1, 0.9, 9) if values.size > 1 else ():
        i = min(int(q * (values.size - 1)), values.size - 2)
        candidates.add(float((values[i] + values[i + 1]) / 2))
    return sorted(t for t in candidates if not values.size or float(np.min(np.abs(values - t))) > guard)


def exit_agreement(logits_a: list, logits_b: list, guard: float = 0.0) -> tuple[list, dict]:
    """Per-exit top-1 agreement and exit-decision agreement over the threshold sweep (fractions of samples)."""
    exits = []
    for k, (za, zb) in enumerate(zip(logits_a, logits_b)):
        pa, pb = za.argmax(-1), zb.argmax(-1)
        exits.append({"exit": k, "top1_agreement": float(np.mean(pa == pb)),
                      "top1_mismatches": [int(i) for i in np.flatnonzero(pa != pb)[:20]],
                      "logits_max_abs": float(np.abs(za.astype(np.float64) - zb).max())})
    decisions = {"thresholds": [], "agreement": [], "rule": "first exit whose max softmax >= t (t shared by the "
                 "exits before the last; no t within `guard` of one of A's confidences); the last exit takes the rest"}
    if len(logits_a) > 1:
        scores_a = np.stack([max_softmax(z) for z in logits_a])
        scores_b = np.stack([max_softmax(z) for z in logits_b])
        decisions["guard"] = guard
        for t in threshold_sweep(scores_a, guard):
            th = np.full(len(logits_a) - 1, t)
            same = exit_indices(scores_a, th) == exit_indices(scores_b, th)
            decisions["thresholds"].append(t)
            decisions["agreement"].append(float(np.mean(same)))
        decisions["min_agreement"] = min(decisions["agreement"])
        decisions["mean_agreement"] = float(np.mean(decisions["agreement"]))
    return exits, decisions


def compare_stages(a: dict, b: dict, cfg: DVTConfig, atol: float = 1e-5) -> dict:
    """The whole comparison of two captured runs (`order_stages` dicts) as a JSON-ready dict."""
    rows, first = [], None
    for index, name in enumerate(a):
        if name not in b:
            raise KeyError(f"stage {name} is missing from B")
        row = {"index": index, "stage": name, **stage_metrics(a[name], b[name], atol)}
        rows.append(row)
        if row["diverged"] and first is None:
            first = {"stage": name, "index": index, "max_abs": row["max_abs"], "max_rel": row["max_rel"],
                     "stages_within_before": index}
    heads = [stage_name(k, "head") for k in range(cfg.num_exits)]
    exits, decisions = exit_agreement([a[h] for h in heads], [b[h] for h in heads], guard=atol)
    return {"atol": atol, "divergence_rule": "max |A - B| > atol x max(1, max |A|)", "samples": int(a[heads[0]].shape[0]),
            "stages": rows, "first_divergence": first, "exits": exits, "exit_decisions": decisions}


def comparison_inputs(cfg: DVTConfig, images_dir=None, random: int | None = None, seed: int = 0,
                      default_random: int = 8) -> tuple[np.ndarray, dict]:
    """(N, C, H, W) float32 inputs and their description: the image files of `images_dir` through `cfg`'s
    evaluation transform, or `random` seeded N(0, 1) images. ValueError for an empty or missing folder."""
    if images_dir is not None:
        from pathlib import Path

        from .deploy.preprocess import IMAGE_SUFFIXES, preprocess_image_file
        folder = Path(images_dir)
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not files:
            raise ValueError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})" if folder.is_dir()
                             else f"--images {folder}: no such folder")
        x = np.stack([preprocess_image_file(f, cfg) for f in files]).astype(np.float32)
        return x, {"kind": "images", "folder": str(folder), "files": [f.name for f in files],
                   "description": f"{len(files)} image files from {folder} ({cfg.name}'s evaluation transform)"}
    n = default_random if random is None else random
    if n < 1:
        raise ValueError(f"--random must be >= 1, got {n}")
    x = np.random.default_rng(seed).standard_normal((n, cfg.in_chans, cfg.img_size, cfg.img_size))
    return x.astype(np.float32), {"kind": "random", "count": n, "seed": seed,
                                  "description": f"{n} N(0, 1) images, seed {seed}"}


def exit_output_stages(outs, to_numpy) -> dict:
    """The stages an exit returns in its `ExitOutput`s (head logits, attention logits, reused context and
    relations), named; `to_numpy` turns a framework tensor into a float32 array."""
    seen = {}
    for k, out in enumerate(outs):
        seen[stage_name(k, "head")] = to_numpy(out.logits)
        for kind, tensors in (("attn_logits", out.relations), ("reused_context", out.reused_context),
                              ("reused_relations", out.reused_relations)):
            for i, t in enumerate(tensors or ()):
                seen[stage_name(k, kind, i)] = to_numpy(t)
    return seen


# ---- report ------------------------------------------------------------------------------------------
def _fmt(x) -> str:
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
    return str(x)


def _side(side: dict) -> str:
    return (f"`{side['path']}` — {side['framework']} {side.get('framework_version', '')}, {side['precision']}, "
            f"{side['naming']} names, model {side['model']}")


def markdown(report: dict) -> str:
    """The report a person reads: what was compared, where it first diverged, agreement, every stage."""
    r = report
    first = r["first_divergence"]
    lines = ["# Divergence report", "",
             f"- A (reference): {_side(r['a'])}", f"- B: {_side(r['b'])}",
             f"- inputs: {r['inputs']['description']}",
             f"- tolerance: atol {r['atol']:g}; a stage diverges when {r['divergence_rule']}", ""]
    if first is None:
        lines.append(f"**No stage diverges**: all {len(r['stages'])} stages within tolerance.")
    else:
        lines.append(f"**First divergence: `{first['stage']}`** (stage {first['index'] + 1} of {len(r['stages'])}; "
                     f"max |A - B| {_fmt(first['max_abs'])}, relative {_fmt(first['max_rel'])}); "
                     f"the {first['stages_within_before']} stages before it are within tolerance.")
    lines += ["", "| exit | top-1 agreement | logits max-abs | mismatched samples |", "|---|---|---|---|"]
    for e in r["exits"]:
        lines.append(f"| {e['exit']} | {e['top1_agreement']:.4f} | {_fmt(e['logits_max_abs'])} | "
                     f"{', '.join(map(str, e['top1_mismatches'])) or '-'} |")
    dec = r["exit_decisions"]
    if dec["thresholds"]:
        worst = min(range(len(dec["agreement"])), key=lambda i: dec["agreement"][i])
        lines += ["", f"Exit decisions ({dec['rule']}): agreement min {dec['min_agreement']:.4f} (at t = "
                      f"{dec['thresholds'][worst]:.3g}), mean {dec['mean_agreement']:.4f} over "
                      f"{len(dec['thresholds'])} thresholds."]
    lines += ["", "| # | stage | shape | max-abs | max-rel | cosine | mean-abs | within atol | diverged |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in r["stages"]:
        lines.append(f"| {s['index']} | {s['stage']} | {'x'.join(map(str, s['shape']))} | {_fmt(s['max_abs'])} | "
                     f"{_fmt(s['max_rel'])} | {s['cosine']:.8f} | {_fmt(s['mean_abs'])} | {s['match_ratio']:.4f} | "
                     f"{'**yes**' if s['diverged'] else 'no'} |")
    if r.get("dumps"):
        lines += ["", f"Per-stage tensors: `{r['dumps']['a']}`, `{r['dumps']['b']}` ({r['dumps']['format']})."]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items()))]
    return "\n".join(lines) + "\n"
