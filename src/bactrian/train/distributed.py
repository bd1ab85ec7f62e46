"""Data parallelism under torchrun / accelerate launch. Every rank sees the whole global batch schedule and
trains on its share; LoRA gradients (small) are summed across ranks with one all-reduce per step."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> DistributedContext:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        context = cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(context.device())
            # ranks wait in barriers while rank 0 tokenizes (minutes for millions of rows): NCCL's 10 minutes is short
            minutes = int(os.environ.get("BACTRIAN_DIST_TIMEOUT_MINUTES", "120"))
            dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
        return context

    def device(self) -> torch.device:
        """This rank's GPU: its local rank among the GPUs it sees (one, where the launcher gives each process its
        own), or the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % torch.cuda.device_count())
        return torch.device("cpu")

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce in place (sum) when distributed, on this rank's device: NCCL cannot reduce the CPU tensors
        that the loss and eval sums are kept in."""
        if self.enabled:
            on_device = tensor.to(self.device())
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
            if on_device is not tensor:
                tensor.copy_(on_device)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        grads = [param.grad for param in parameters]
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
