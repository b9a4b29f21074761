"""Process group for `torchrun --nproc_per_node=N torch_impl/train.py`: NCCL on GPUs, gloo on CPU.

    dist = init_distributed("auto")      # reads RANK / WORLD_SIZE / LOCAL_RANK set by torchrun
    if dist.is_main: ...                 # only rank 0 writes files
    dist.barrier(); dist.close()

Without torchrun (no WORLD_SIZE or WORLD_SIZE=1) everything is a no-op on one process. On CPU,
gloo needs a usable interface: on one machine set GLOO_SOCKET_IFNAME=lo and --master_addr=127.0.0.1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            tdist.barrier()

    def all_gather_object(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.distributed and tdist.is_initialized():
            tdist.destroy_process_group()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when available, else CPU; 'cuda' without a GPU is an error."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is available (use --device cpu or auto)")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device: str = "auto") -> DistInfo:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank if world_size > 1 else 0)
    if world_size > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        tdist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world_size, local_rank, dev)
