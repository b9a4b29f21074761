"""MindSpore implementation of DVT (Dynamic Vision Transformer, NeurIPS 2021), for Ascend, GPU and CPU.

    import ms_impl
    ms_impl.configure(device="cpu")                       # or "gpu" / "ascend", before any kernel runs
    model = ms_impl.create_model("dvt_t2t_vit_12", checkpoint_path="dvt.ckpt")
    logits = model(images)            # tuple, one (B, 1000) tensor per exit; PYNATIVE or GRAPH mode
    # MindCV's arguments: heads for 10 classes, the rest from the file
    model = ms_impl.create_model("dvt_t2t_vit_12", num_classes=10, pretrained=True, checkpoint_path="dvt.ckpt")
    ms_impl.apply_amp(model, "O1")    # mixed precision for Ascend/GPU (policy in ms_impl/amp.py)

The same models as `torch_impl`, cell for cell and with the same parameter names (LayerNorm weight/bias
are gamma/beta here; `common.naming` holds the one mapping). Never imports torch.
"""
from common import list_models

from .amp import apply_amp
from .checkpoint import CheckpointMismatchError, LoadInfo, load_checkpoint, save_checkpoint
from .models import DVT, ExitOutput, create_model
from .runtime import configure

__all__ = ["CheckpointMismatchError", "DVT", "ExitOutput", "LoadInfo", "apply_amp", "configure", "create_model",
           "list_models", "load_checkpoint", "save_checkpoint"]
