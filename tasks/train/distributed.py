"""This process's place under `torchrun` (or alone), and the few collectives training needs.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them we are rank 0 of 1 and nothing here does
any communication. gloo on CPU, NCCL on CUDA. How the model spreads over the ranks (DDP or FSDP2) is
tasks/train/parallel.py's.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as torch_dist


class Ranks:
    """This process's place under torchrun (or alone), and the few collectives training needs."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local = int(os.environ.get("LOCAL_RANK", "0"))

    def start(self, device_type: str, group: bool = False) -> None:
        """The process group, when there is more than one process or `group` asks for one anyway (FSDP needs
        one: alone, a group of one in this process's memory, which needs no torchrun)."""
        if torch_dist.is_initialized() or (self.world == 1 and not group):
            return
        backend = "nccl" if device_type == "cuda" else "gloo"
        if self.world > 1:
            torch_dist.init_process_group(backend)
        else:
            torch_dist.init_process_group(backend, store=torch_dist.HashStore(), rank=0, world_size=1)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks, as a tensor on the device (reading it is the caller's host sync)."""
        if self.world > 1:
            value = value.clone()
            torch_dist.all_reduce(value)
            value /= self.world
        return value.detach()

    def total(self, value: float, device: torch.device) -> float:
        """The sum of a host number over ranks (one all-reduce; the number itself on every rank)."""
        if self.world == 1:
            return value
        tensor = torch.tensor(value, dtype=torch.float64, device=device)
        torch_dist.all_reduce(tensor)
        return tensor.item()

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()
