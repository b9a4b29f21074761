"""The official DVT PyTorch code, loaded from a local copy of its repository (never part of this project).

    modules = load_official("/path/to/Dynamic-Vision-Transformer", scratch_dir)
    ref = build_official("dvt_t2t_vit_12", modules)      # random init: load our weights into it
    ref.load_state_dict(torch_impl.checkpoint.named_state_dict(ours, "reference"), strict=True)

Used by the parity test against it (`tests/test_torch_reference.py`) and the benchmark's `--reference DIR`.
`repo` is a checkout or a bare git mirror of GitHub blackfeather-wang/Dynamic-Vision-Transformer. The
six files the models need are copied into a scratch package and patched there, and only there:

- its vendored timm's relative imports point at the installed timm (the vendored copy predates torch 2);
  `models_deit.py` reads the vendored ViT, which carries DVT's reuse;
- `@register_model` is dropped: its names stay out of timm's registry (it would shadow timm's DeiTs);
- `.cuda()` is dropped: its blocks move a zero pad to the GPU, so as published they run on CUDA only;
- `trunc_normal_` is a no-op in the loaded modules: their init is overwritten by the weights loaded next.

The scratch package is imported under a private name and removed from `sys.modules` / `sys.path` again
at once; the returned module objects keep working.
"""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = "_dvt_official"
FILES = {  # path in the official repo -> module name in the scratch package
    "models/t2t_vit.py": "t2t_vit", "models/token_performer.py": "token_performer",
    "models/token_transformer.py": "token_transformer", "models/transformer_block.py": "transformer_block",
    "timm/models/vision_transformer.py": "vision_transformer", "models_deit.py": "models_deit",
}
PATCHES = (
    (r"from \.helpers import", "from timm.models.helpers import"),
    (r"from \.layers import", "from timm.layers import"),
    (r"from \.resnet import", "from timm.models.resnet import"),
    (r"from \.registry import", "from timm.models.registry import"),
    (r"from timm\.models\.vision_transformer import", "from .vision_transformer import"),
    (r"(?m)^@register_model[ \t]*\n", ""),
    (r"\.cuda\(\)", ""),
)
# our cascade name -> (official module, class, keyword arguments)
OFFICIAL_MODELS = {
    "dvt_t2t_vit_12": ("t2t_vit", "DVT_T2t_vit_12_model", dict(feature_reuse=True, relation_reuse=True)),
    "dvt_t2t_vit_14": ("t2t_vit", "DVT_T2t_vit_14_model", dict(feature_reuse=True, relation_reuse=True)),
    "dvt_deit_small": ("models_deit", "DVT_Deit_small_model", dict(feature_reuse=True, relation_reuse=True)),
    "t2t_vit_t_14": ("t2t_vit", "T2t_vit_t_14", {}),  # single model with transformer token layers
}


def read_official_file(repo: str | Path, path: str) -> str:
    """`path` of the official repository: from a checkout, else from a (bare) git directory's HEAD."""
    repo = Path(repo)
    if (repo / path).is_file():
        return (repo / path).read_text()
    if (repo / "HEAD").is_file():  # a bare mirror
        done = subprocess.run(["git", "--git-dir", str(repo), "show", f"HEAD:{path}"], capture_output=True,
                              text=True)
        if done.returncode == 0:
            return done.stdout
    raise FileNotFoundError(f"{path} not found in {repo} (expected a checkout or a git mirror of "
                            "github.com/blackfeather-wang/Dynamic-Vision-Transformer)")


def is_official_repo(repo: str | Path) -> bool:
    try:
        read_official_file(repo, "models/t2t_vit.py")
    except (FileNotFoundError, OSError):
        return False
    return True


def load_official(repo: str | Path, scratch: str | Path) -> dict:
    """Copy, patch and import the official model files; -> {module name: module} ('t2t_vit', 'models_deit', ...)."""
    pkg = Path(scratch) / PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for src, module in FILES.items():
        text = read_official_file(repo, src)
        for pattern, repl in PATCHES:
            text = re.sub(pattern, repl, text)
        (pkg / f"{module}.py").write_text(text)
    stale = [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]
    for name in stale:
        del sys.modules[name]
    sys.path.insert(0, str(Path(scratch)))
    try:
        importlib.invalidate_caches()
        modules = {m: importlib.import_module(f"{PACKAGE}.{m}") for m in FILES.values()}
    finally:
        sys.path.remove(str(Path(scratch)))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]
    for module in ("t2t_vit", "vision_transformer", "models_deit"):
        modules[module].trunc_normal_ = lambda t, *a, **k: t
    return modules


def build_official(name: str, modules: dict):
    """The official model for our config `name` (randomly initialised, eval mode)."""
    if name not in OFFICIAL_MODELS:
        raise ValueError(f"no official counterpart of {name!r}; known: {sorted(OFFICIAL_MODELS)}")
    module, cls, kwargs = OFFICIAL_MODELS[name]
    return getattr(modules[module], cls)(**kwargs).eval()
