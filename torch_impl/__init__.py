"""PyTorch implementation of DVT (Dynamic Vision Transformer, NeurIPS 2021).

    import torch_impl
    model = torch_impl.create_model("dvt_t2t_vit_12", checkpoint_path="released.pth")
    logits = model(images)            # tuple, one (B, 1000) tensor per exit (one tensor for a single-exit model)
    model.forward_features(images)    # timm's model API, per exit (torch_impl/models/dvt.py)

Importing this package also registers every config of `common.list_models()` in timm, so
`timm.create_model("dvt_t2t_vit_12")` builds the same model.
"""
from common import list_models

from .checkpoint import CheckpointMismatchError, LoadInfo, load_checkpoint, save_checkpoint
from .models import DVT, ExitOutput, create_model

__all__ = ["CheckpointMismatchError", "DVT", "ExitOutput", "LoadInfo", "create_model", "list_models",
           "load_checkpoint", "save_checkpoint"]
