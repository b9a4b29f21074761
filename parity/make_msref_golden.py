#!/usr/bin/env python
"""Golden outputs of the official MindSpore port of DVT, made by running the port's own code.

    python parity/make_msref_golden.py --port DIR                           # -> parity/golden/msref/
    python parity/make_msref_golden.py --port DIR --full-size --out /tmp/msref-full   # check once, not committed

DIR is a checkout of github.com/blackfeather-wang/Dynamic-Vision-Transformer-MindSpore (MindSpore 1.5 era).
Nothing of it is copied into this project: this script imports its modules from DIR and calls them.
Steps, per reuse variant (its four `configs/local/vit_dvt/deit_dvt_12_49_196_{w,n}_f_{w,n}_r_..._inference
.yml.j2` templates):

1. MindSpore 2.10 compatibility, without editing the port: `mindspore.nn.ResizeBilinear` (imported but unused
   by `networks/transformer_dvt.py`) is given a placeholder, and `mindspore._checkparam.Validator` / `.Rel`,
   which MindSpore 2.x flattened into the module itself, point at the module (the port's AdamW uses them).
2. The template is rendered with the port's own parser (`utils.cfg_parser.parse_yaml`: DEVICE=CPU,
   DATASET=imagenet, batch 2). For the committed fixtures the template's `base_cfg` dict (width, depth,
   heads, MLP width, head width) and the literal `in_d_model` of the last exit's MLP are set to the
   reduced sizes of `REDUCED`; everything else is the port's (patch 32 -> 16 at 224x224, 1001 classes,
   the 128 -> 48 context MLP, its GELU / LayerNorm / Softmax / initialisers).
3. The network is built by the port's `utils.dynamic_call` from the rendered `network:` section.
4. Every parameter is drawn from a seeded numpy generator (LayerNorm gamma 1 + 0.1 N, betas and biases
   0.1 N, cls token and position embedding 0.5 N, weights N / sqrt(fan_in)), rounded to float16 values
   (exact in float32; half the bytes on disk) and set into the port's cells.
5. PYNATIVE, eval mode, on two seeded N(0, 1) images (float16-exact): the port's two exits' logits.
6. Stored: the weights (port names) — for the variant with both reuses as a real `.ckpt` written from the
   port's network (`mindspore.save_checkpoint`), for the others as float16 `.safetensors` — and the logits.
7. A training checkpoint: the both-reuse network trained one step through the port's own training path
   (`mindspore.train.Model` with the port's `CrossEntropySmoothMixup2`, its `nn.optimizers.adamw_gcnorm.AdamW`
   with `beta_bias_wd_filter`, fixed loss scale 1024, `ModelCheckpoint`), exactly as its train config builds
   them: weights plus `adam_m.*`, `adam_v.*`, `global_step`, `beta1_power`, `beta2_power`, `learning_rate`;
   the trained network's eval logits are stored with it.

`parity/test_parity_msref.py` loads these files into our models in both frameworks and compares; with
DVT_MSREF_DIR=DIR it runs the same checks on a `--full-size` output directory.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

OUT = HERE / "golden" / "msref"
VARIANTS = {  # our registered name -> the port's template tag (w = with, n = without; f = feature, r = relation)
    "dvt_deit_small_msref": "w_f_w_r",
    "dvt_deit_small_msref_feature_reuse": "w_f_n_r",
    "dvt_deit_small_msref_relation_reuse": "n_f_w_r",
    "dvt_deit_small_msref_no_reuse": "n_f_n_r",
}
CKPT_VARIANT = "dvt_deit_small_msref"  # stored as the port's own .ckpt files (weights-only and training)
TEMPLATE = "configs/local/vit_dvt/deit_dvt_12_49_196_{tag}_adamw_originhead_dataaug_mixup_inference.yml.j2"
# The committed size: the port's base_cfg keys; our config is the registered one with OVERRIDES.
REDUCED = {"d_model": 16, "depth": 2, "heads": 2, "mlp_dim": 32, "dim_head": 8}
OVERRIDES = {"dim": 16, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
BATCH = 2
SIZE_LIMIT = 4_000_000  # bytes, all committed msref fixtures together


def seed_of(name: str, salt: str) -> int:
    import zlib
    return zlib.crc32(f"{name}:{salt}".encode()) % (2 ** 31)


def import_port(port: Path):
    """(parse_yaml, dynamic_call) of the port, after the two MindSpore 2.10 compatibility shims (step 1)."""
    import mindspore._checkparam as checkparam
    import mindspore.nn
    if not hasattr(mindspore.nn, "ResizeBilinear"):
        mindspore.nn.ResizeBilinear = type("ResizeBilinear", (), {})  # imported, never used by the port
    if not hasattr(checkparam, "Validator"):
        checkparam.Validator = checkparam  # MindSpore 2.x: Validator.check_* are module functions
        checkparam.Rel = checkparam  # ... and Rel.INC_* module constants
    sys.path.insert(0, str(port))
    from utils import dynamic_call
    from utils.cfg_parser import parse_yaml
    return parse_yaml, dynamic_call


def render(port: Path, parse_yaml, name: str, full_size: bool, workdir: Path) -> dict:
    """The port's rendered config for one variant (step 2)."""
    text = (port / TEMPLATE.format(tag=VARIANTS[name])).read_text()
    if not full_size:
        feature = VARIANTS[name].startswith("w_f")
        base = dict(REDUCED, d_model_norm2=REDUCED["d_model"] + (48 if feature else 0))
        text, n = re.subn(r"\{% set base_cfg = \{[^}]*\} %\}", "{% set base_cfg = " + repr(base) + " %}", text)
        text, m = re.subn(r"in_d_model: \d+", f"in_d_model: {base['d_model_norm2']}", text)
        assert n == 1 and m == 1, f"the port's template changed: base_cfg x{n}, in_d_model x{m}"
    path = workdir / f"{name}.yml.j2"
    path.write_text(text)
    return parse_yaml(str(path), {"DEVICE": "CPU", "DATASET": "imagenet", "TRAIN_BATCH_SIZE": BATCH,
                                  "EVAL_BATCH_SIZE": BATCH, "DEVICE_NUM": 1, "VERSION": 1, "START_EPOCH": 0,
                                  "NUM_EPOCHS": 1, "STAT": 0})


def build(dynamic_call, cfg: dict):
    with contextlib.redirect_stdout(io.StringIO()):  # the port prints while it builds
        return dynamic_call(cfg["network"])


def seeded_weights(net, seed: int) -> dict:
    """Step 4: fill every parameter of the port's network; returns port name -> float32 array."""
    from mindspore import Tensor
    rng = np.random.default_rng(seed)
    out = {}
    for name, param in net.parameters_and_names():
        shape, leaf = tuple(param.shape), name.rsplit(".", 1)[-1]
        if leaf == "gamma":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf in ("beta", "bias"):
            value = 0.1 * rng.standard_normal(shape)
        elif leaf in ("cls_token", "cls", "pos_embedding"):
            value = 0.5 * rng.standard_normal(shape)
        else:
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        value = value.astype(np.float16).astype(np.float32)
        param.set_data(Tensor(value))
        out[name] = value
    return out


def port_logits(net, images: np.ndarray) -> list:
    from mindspore import Tensor
    net.set_train(False)
    return [z.asnumpy() for z in net(Tensor(images))]


def train_one_step(dynamic_call, cfg: dict, net, images: np.ndarray, labels: np.ndarray, workdir: Path) -> Path:
    """Step 7: the port's optimizer, loss and Model from its config, one step, its ModelCheckpoint file."""
    import mindspore.dataset as ds
    from mindspore import Tensor
    from mindspore.train.callback import CheckpointConfig, ModelCheckpoint
    lr = np.full(4, 1e-3, np.float32)
    optimizer = dynamic_call(cfg["optimizer"], inject_args={"params": net.trainable_params(),
                                                            "learning_rate": Tensor(lr)})
    model = dynamic_call(cfg["train_model"], inject_args={"network": net, "optimizer": optimizer})
    onehot = np.eye(cfg["network"]["normal_token_backbone"]["head"]["num_classes"], dtype=np.float32)[labels]
    data = ds.NumpySlicesDataset({"image": images, "label": onehot}, shuffle=False).batch(BATCH)
    directory = workdir / "train"
    callback = ModelCheckpoint(prefix="port", directory=str(directory),
                               config=CheckpointConfig(save_checkpoint_steps=1, keep_checkpoint_max=1))
    net.set_train(True)
    model.train(1, data, callbacks=[callback], dataset_sink_mode=False)
    (path,) = glob.glob(str(directory / "*.ckpt"))
    return Path(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _port_commit(port: Path, given: str | None = None) -> str | None:
    if given:
        return given
    try:
        return subprocess.run(["git", "-C", str(port), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def generate(port: Path, out: Path, full_size: bool, port_commit: str | None = None) -> dict:
    import mindspore as ms
    from safetensors.numpy import save_file
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    ms.set_seed(seed_of("msref", "mindspore"))  # dropout masks of the training step
    parse_yaml, dynamic_call = import_port(port.resolve())
    rng = np.random.default_rng(seed_of("msref", "images"))
    images = rng.standard_normal((BATCH, 3, 224, 224)).astype(np.float16)
    labels = rng.integers(0, 1000, BATCH)
    out.mkdir(parents=True, exist_ok=True)
    logits, entries = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in VARIANTS:
            cfg = render(port, parse_yaml, name, full_size, workdir)
            net = build(dynamic_call, cfg)
            weights = seeded_weights(net, seed_of(name, "msref"))
            got = port_logits(net, images.astype(np.float32))
            logits.update({f"{name}/exit{k}": z for k, z in enumerate(got)})
            files = {}
            if name == CKPT_VARIANT:
                ms.save_checkpoint(net, str(out / f"{name}.ckpt"))
                files["weights"] = f"{name}.ckpt"
                train = train_one_step(dynamic_call, cfg, net, images.astype(np.float32), labels, workdir)
                shutil.copyfile(train, out / f"{name}_train.ckpt")
                files["training"] = f"{name}_train.ckpt"
                trained = port_logits(net, images.astype(np.float32))
                logits.update({f"{name}_train/exit{k}": z for k, z in enumerate(trained)})
            else:
                save_file({k: v.astype(np.float16) for k, v in weights.items()}, str(out / f"{name}.safetensors"),
                          metadata={"naming": "msref", "made_by": "the MindSpore port's network code"})
                files["weights"] = f"{name}.safetensors"
            entries[name] = {"template": TEMPLATE.format(tag=VARIANTS[name]), "seed": seed_of(name, "msref"),
                             "parameters": int(sum(v.size for v in weights.values())), "files": files}
    np.savez(out / "inputs.npz", images=images, labels=labels)
    np.savez(out / "logits.npz", **logits)
    manifest = {
        "generated_by": "python parity/make_msref_golden.py --port DIR" + (" --full-size" if full_size else ""),
        "port": "github.com/blackfeather-wang/Dynamic-Vision-Transformer-MindSpore", "port_commit": _port_commit(port, port_commit),
        "mindspore": ms.__version__, "numpy": np.__version__, "batch": BATCH,
        "size": "full" if full_size else {"port_base_cfg": REDUCED, "our_overrides": OVERRIDES},
        "variants": entries,
    }
    files = sorted(p.name for p in out.iterdir() if p.name != "MANIFEST.json")
    for f in files:  # MindSpore writes .ckpt files read-only for the owner
        os.chmod(out / f, 0o644)
    manifest["sha256"] = {f: _sha256(out / f) for f in files}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--port", type=Path, required=True, help="checkout of the MindSpore port (read, never copied)")
    p.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    p.add_argument("--full-size", action="store_true", help="the port's DeiT-small sizes (about 1 GB; do not commit)")
    p.add_argument("--port-commit", help="the port's commit, for the manifest when DIR is not a git checkout")
    args = p.parse_args(argv)
    if not (args.port / "networks" / "vit_dvt.py").is_file():
        p.error(f"{args.port} is not a checkout of the MindSpore port (no networks/vit_dvt.py)")
    manifest = generate(args.port, args.out, args.full_size, args.port_commit)
    total = sum((args.out / f).stat().st_size for f in manifest["sha256"])
    print(f"wrote {len(manifest['sha256'])} files, {total / 1e6:.2f} MB, to {args.out}")
    if not args.full_size and total > SIZE_LIMIT:
        print(f"error: the fixtures exceed {SIZE_LIMIT / 1e6:.1f} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
