"""One process or many: the same recovery under ``torchrun --nproc_per_node N [--nnodes M]``.

torchrun sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; then the processes join one group (nccl on
GPUs, gloo on CPUs), the student is wrapped in DistributedDataParallel (gradients averaged every
step), each process trains on its share of every global batch, and only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def wrap(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def mean(self, value: float) -> float:
        return self.sum(value) / self.size

    def sum(self, value: float) -> float:
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item())

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes (in place)."""
        if self.distributed:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def leave(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def join(device: str | None = None) -> World:
    """This process's place: alone, or the rank torchrun gave it, on ``device`` (default: its GPU if
    there is one, else the CPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local)
    if size > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return World(rank, size, chosen)
