"""The command-line schema shared by `torch_impl/train.py` and `ms_impl/train.py`.

Precedence, lowest to highest: parser defaults < the model's recipe (`recipes.recipe_for`) < a YAML
file given with `--config` < flags on the command line. Keys in the YAML file are the flag names
(dashes or underscores); an unknown key is an error that lists the valid ones.
"""
from __future__ import annotations

import argparse
import os

from common.readers import BadFileError, read_yaml
from common.registry import get_config
from common.thresholds.pipeline import DEFAULT_SOLVERS_TEXT, parse_solvers

from .recipes import recipe_for

DEFAULT_MODEL = "dvt_tiny_digits"
DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")
DEVICES = {"torch": ("auto", "cpu", "cuda"), "mindspore": ("auto", "CPU", "GPU", "Ascend")}
CALIBRATE_ON = ("calib", "train")
CALIBRATE_ON_HELP = ("split the thresholds are solved on: the held-out calibration split, or the training split "
                     "without augmentation (the paper's choice; also writes train_outputs.npz)")
AMP_LEVELS = ("O1", "O2", "auto")  # ms_impl.amp levels; torch.amp autocast runs for each (module docstring)
BASELINE_HELP = ("a finished run of a single-exit backbone on the same data (e.g. t2t_vit_12): drawn as a labelled point "
                 "in accuracy_vs_gflops.png; repeatable")
CPU_THREADS_HELP = ("MindSpore CPU kernel threads; 1 (default) makes CPU runs bitwise reproducible (multi-threaded "
                    "kernels sum in a thread-dependent order), 0 = MindSpore's own pool")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.replace(",", " ").split())


def build_train_parser(framework: str = "torch") -> argparse.ArgumentParser:
    if framework not in DEVICES:
        raise ValueError(f"framework must be one of {sorted(DEVICES)}, got {framework!r}")
    p = argparse.ArgumentParser(
        description=f"Train a DVT cascade ({framework}). With no arguments: the tiny default model on the "
                    "embedded digits data, then thresholds, budget curve and plots in --output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("-c", "--config", default="", help="YAML file of flag values (flags given here win)")

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, help=f"registered model name (default: {DEFAULT_MODEL}; see tools/flops.py)")
    g.add_argument("--num-classes", type=int, default=None, help="override the config's classes (transfer)")
    g.add_argument("--img-size", type=int, default=None, help="override the config's input size")
    g.add_argument("--initial-checkpoint", default="",
                   help="start from these weights (any supported format); a head of another size is re-initialised")
    g.add_argument("--drop", type=float, default=0.0, help="dropout rate")
    g.add_argument("--drop-path", type=float, default=None, help="stochastic depth rate (default: recipe)")
    g.add_argument("--token-drop", type=float, default=None,
                   help="dropout inside the T2T Performer token layers (default: the model's, 0.1 as the reference "
                        "hard-codes it; the digits recipe: 0)")

    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="digits")
    g.add_argument("--data-dir", default="", help="dataset root (CIFAR python folder or ImageFolder root)")
    g.add_argument("--calib-size", type=float, default=None,
                   help="training images held out for calibrating thresholds (count, or fraction if < 1)")
    g.add_argument("--workers", type=int, default=2, help="data-loading workers")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("-b", "--batch-size", type=int, default=64, help="per-process batch size")
    g.add_argument("--opt", default="adamw")
    g.add_argument("--opt-eps", type=float, default=1e-8)
    g.add_argument("--opt-betas", type=_floats, default=(0.9, 0.999))
    g.add_argument("--lr", type=float, default=5e-4)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--clip-grad", type=float, default=None, help="gradient norm clipping (off when unset)")
    g.add_argument("--sched", default="cosine")
    g.add_argument("--warmup-epochs", type=int, default=5)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=1e-5)
    g.add_argument("--cooldown-epochs", type=int, default=0)
    g.add_argument("--exit-weights", type=_floats, default=None,
                   help="per-exit loss weights, e.g. '1,1,1' (default: unweighted sum, as the paper)")

    g = p.add_argument_group("augmentation and regularisation")
    g.add_argument("--aa", default=None, help="RandAugment policy, e.g. rand-m9-mstd0.5-inc1 (None: off)")
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--remode", default="pixel")
    g.add_argument("--recount", type=int, default=1)
    g.add_argument("--mixup", type=float, default=0.0)
    g.add_argument("--cutmix", type=float, default=0.0)
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--smoothing", type=float, default=0.1)
    g.add_argument("--train-interpolation", default="bilinear")
    g.add_argument("--color-jitter", type=float, default=0.0)
    g.add_argument("--hflip", type=float, default=0.5)
    g.add_argument("--scale", type=_floats, default=(0.08, 1.0))
    g.add_argument("--ratio", type=_floats, default=(3 / 4, 4 / 3))
    g.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=False)
    g.add_argument("--model-ema-decay", type=float, default=0.9998)
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="mixed precision")
    g.add_argument("--amp-level", choices=AMP_LEVELS, default="O1",
                   help="with --amp: MindSpore's level (ms_impl.amp); PyTorch runs torch.amp autocast (O1-like) for each")
    g.add_argument("--loss-scale", default="dynamic",
                   help="with --amp: 'dynamic' (from 2^16, halved on overflow, doubled after 2000 good steps) or a "
                        "fixed number (MindCV's fixed loss scale; PyTorch's GradScaler starts there and never grows)")

    g = p.add_argument_group("run")
    g.add_argument("--output", default=None,
                   help="folder for checkpoints, logs, summary, plots (default: a new outputs/train/<date>-<time>-"
                        "<model>); a folder that holds a run is refused unless --resume continues it or --force")
    g.add_argument("--resume", default="", help="resume from this training state (or 'auto': --output's last_state)")
    g.add_argument("--force", action="store_true",
                   help="start afresh in an --output that holds a run: deletes that run's files (checkpoint, state, "
                        "log, summary, outputs, thresholds, plots, config, args) first; other files stay")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--log-interval", type=int, default=20)
    g.add_argument("--eval-batch-size", type=int, default=None, help="default: 2 x batch size")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke tests)")
    g.add_argument("--device", choices=DEVICES[framework], default="auto")
    if framework == "mindspore":
        # GRAPH is the default: on CPU it trains the digits model ~10x faster than PYNATIVE (ms_impl/train.py).
        g.add_argument("--mode", choices=("graph", "pynative"), default="graph",
                       help="MindSpore execution mode: graph (compiled, fast) or pynative (eager, for debugging)")
        g.add_argument("--cpu-threads", type=int, default=1, help=CPU_THREADS_HELP)

    g = p.add_argument_group("thresholds")
    g.add_argument("--solvers", default=DEFAULT_SOLVERS_TEXT,
                   help="threshold solvers to run at the end; thresholds.json's default_solver is the first of "
                        "anchored or the first listed")
    g.add_argument("--calibrate-on", choices=CALIBRATE_ON, default="calib", help=CALIBRATE_ON_HELP)
    g.add_argument("--baseline", action="append", default=None, metavar="RUN_DIR", help=BASELINE_HELP)
    return p


def _load_yaml(path: str, parser: argparse.ArgumentParser) -> dict:
    """The flag values of a --config file; a missing, unreadable or wrong file ends with exit status 2."""
    expected = "a YAML mapping of flag names to values"
    try:
        data = read_yaml(path, expected)
    except FileNotFoundError:
        parser.error(f"--config {path!r} does not exist")
    except BadFileError as err:
        parser.error(f"--config {err}")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected {expected}; it holds a {type(data).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions:
            parser.error(f"--config {path}: unknown key {key!r}; valid keys: {sorted(actions)}")
        out[dest] = _yaml_value(actions[dest], value, f"--config {path}: {key}", parser)
    return out


def _yaml_value(action: argparse.Action, value, where: str, parser: argparse.ArgumentParser):
    """A YAML value as the flag would have parsed it (type and choices checked, as on the command line)."""
    if isinstance(value, list):
        value = tuple(value)
    if value is not None and action.type is not None:
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        try:
            value = action.type(text)
        except (TypeError, ValueError):
            parser.error(f"{where}: {value!r} is not a valid value of {'/'.join(action.option_strings)}")
    if action.choices is not None and value not in action.choices:
        parser.error(f"{where}: {value!r} is not one of {list(action.choices)}")
    return value


def parse_train_args(argv=None, framework: str = "torch") -> argparse.Namespace:
    """Parse with recipe and YAML defaults applied; validate what can be validated without data."""
    parser = build_train_parser(framework)
    first = parser.parse_args(argv)  # bad flags fail here, before anything else
    from_yaml = _load_yaml(first.config, parser) if first.config else {}
    model = first.model or from_yaml.get("model") or DEFAULT_MODEL
    try:
        cfg = get_config(model)
    except ValueError as err:
        parser.error(str(err))
    parser.set_defaults(**recipe_for(cfg.name))
    parser.set_defaults(**from_yaml)
    args = parser.parse_args(argv)
    args.model = cfg.name
    args.framework = framework
    _validate(args, parser, cfg)
    return args


def _validate(args, parser, cfg) -> None:
    if args.dataset in ("cifar10", "cifar100", "imagefolder") and not args.data_dir:
        parser.error(f"--dataset {args.dataset} needs --data-dir (the dataset root)")
    if args.exit_weights is not None and len(args.exit_weights) != cfg.num_exits:
        parser.error(f"--exit-weights needs {cfg.num_exits} values for {cfg.name} "
                     f"({cfg.num_exits} exits), got {len(args.exit_weights)}")
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be >= 1")
    for name in ("scale", "ratio", "opt_betas"):
        if len(getattr(args, name)) != 2:
            parser.error(f"--{name.replace('_', '-')} takes two numbers, got {getattr(args, name)}")
    try:
        parse_solvers(args.solvers)
    except ValueError as err:
        parser.error(str(err))
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f"--output {args.output!r} exists and is not a folder")
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch < 1:
        parser.error("--max-steps-per-epoch must be >= 1")
    if args.eval_batch_size is None:
        args.eval_batch_size = 2 * args.batch_size
    _validate_amp_and_baselines(args, parser)
    if args.drop_path is None:
        args.drop_path = cfg.drop_path_rate


def build_eval_parser(framework: str = "torch") -> argparse.ArgumentParser:
    """The command line of `torch_impl/evaluate.py` and `ms_impl/evaluate.py`."""
    if framework not in DEVICES:
        raise ValueError(f"framework must be one of {sorted(DEVICES)}, got {framework!r}")
    p = argparse.ArgumentParser(
        description=f"Evaluate a DVT checkpoint ({framework}): per-exit top-1 on the calibration and test splits, "
                    "thresholds solved on calibration, budget curve on test, plots and summary.json in --output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--checkpoint", required=True, help="weights file (any supported format and naming)")
    p.add_argument("--model", default=None,
                   help="registered model name (default: the config stored in the checkpoint, else inferred from "
                        "its shapes)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the checkpoint's heads")
    p.add_argument("--img-size", type=int, default=None, help="override the config's input size")
    p.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--dataset", choices=DATASETS, default="digits")
    p.add_argument("--data-dir", default="", help="dataset root (CIFAR python folder or ImageFolder root)")
    p.add_argument("--calib-size", type=float, default=None,
                   help="training images held out for calibration (count, or fraction if < 1); must match training")
    p.add_argument("--workers", type=int, default=2, help="data-loading workers")
    p.add_argument("-b", "--batch-size", type=int, default=128)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="mixed precision")
    p.add_argument("--device", choices=DEVICES[framework], default="auto")
    if framework == "mindspore":
        p.add_argument("--mode", choices=("graph", "pynative"), default="graph", help="MindSpore execution mode")
        p.add_argument("--cpu-threads", type=int, default=1, help=CPU_THREADS_HELP)
    p.add_argument("--output", default=None,
                   help="folder for outputs, thresholds, plots, summary (default: a new outputs/eval/<date>-<time>-"
                        "<name>); never a training run's folder; a previous evaluation's folder only with --force")
    p.add_argument("--force", action="store_true",
                   help="replace a previous evaluation in --output (deletes its summary, outputs, thresholds, plots "
                        "and config first; other files stay)")
    p.add_argument("--solvers", default=DEFAULT_SOLVERS_TEXT, help="threshold solvers")
    p.add_argument("--calibrate-on", choices=CALIBRATE_ON, default="calib", help=CALIBRATE_ON_HELP)
    p.add_argument("--seed", type=int, default=42, help="seed of the genetic solver")
    p.add_argument("--baseline", action="append", default=None, metavar="RUN_DIR", help=BASELINE_HELP)
    return p


def parse_eval_args(argv=None, framework: str = "torch") -> argparse.Namespace:
    parser = build_eval_parser(framework)
    args = parser.parse_args(argv)
    args.framework = framework
    if args.dataset in ("cifar10", "cifar100", "imagefolder") and not args.data_dir:
        parser.error(f"--dataset {args.dataset} needs --data-dir (the dataset root)")
    if not os.path.isfile(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint!r}: no such file")
    if args.model is not None:
        try:
            get_config(args.model)
        except ValueError as err:
            parser.error(str(err))
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f"--output {args.output!r} exists and is not a folder")
    _validate_amp_and_baselines(args, parser)
    return args


def _validate_amp_and_baselines(args, parser) -> None:
    """--loss-scale is 'dynamic' or a positive number; every --baseline is a finished run (its summary.json)."""
    scale = getattr(args, "loss_scale", "dynamic")
    if str(scale) != "dynamic":
        try:
            value = float(scale)
        except ValueError:
            value = -1.0
        if not value > 0:
            parser.error(f"--loss-scale takes 'dynamic' or a positive number, got {scale!r}")
        args.loss_scale = value
    for run in args.baseline or ():
        if not os.path.isfile(os.path.join(run, "summary.json")):
            parser.error(f"--baseline {run!r}: not a finished run (expected {os.path.join(run, 'summary.json')})")
