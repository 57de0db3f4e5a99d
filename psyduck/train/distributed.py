"""Several processes: DDP under `torchrun`, over NCCL (GPUs) or gloo (CPUs).

All ranks draw the same global batch of windows and each trains on its own slice, so N processes
with accumulation A/N take the same steps as one process with accumulation A. Alone (no torchrun),
every method here is a no-op and the trainer runs on the configured device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from psyduck import hardware
from psyduck.errors import PsyDuckError


@dataclass(frozen=True)
class Distributed:
    """Where this process sits among the ones `torchrun` started (rank 0 of 1 when alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # started by torchrun: use the process group even when alone

    @property
    def enabled(self) -> bool:
        return self.launched or self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        """Read RANK, LOCAL_RANK and WORLD_SIZE, which torchrun sets for each process."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]), True)

    def start(self, device: str, grad_accum: int) -> torch.device:
        """Join the process group and return this process's device (alone: the configured one)."""
        if not self.enabled:
            return hardware.pick_device(device)
        if grad_accum % self.world_size:
            raise PsyDuckError(
                f"grad_accum={grad_accum} is not divisible by the {self.world_size} processes; "
                "set --grad-accum to a multiple of --nproc_per_node"
            )
        backend = "nccl" if torch.cuda.is_available() and device in ("auto", "cuda") else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def wrap(self, net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model as DDP (gradients averaged across processes in backward); alone, as it is."""
        if not self.enabled:
            return net
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    def describe(self) -> str:
        """'2 process(es) (gloo)' for the start-of-run line."""
        return f"{self.world_size} process(es){f' ({dist.get_backend()})' if self.enabled else ''}"

    def average(self, value: torch.Tensor) -> None:
        """Replace `value` in place by its mean over all processes (gloo has no AVG: sum, divide)."""
        if not self.enabled:
            return
        nccl = dist.get_backend() == "nccl"
        dist.all_reduce(value, op=dist.ReduceOp.AVG if nccl else dist.ReduceOp.SUM)
        if not nccl:
            value /= self.world_size

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        """True on every process when `flag` is true on one of them (all stop at the same step)."""
        if not self.enabled:
            return flag
        f = torch.tensor([1.0 if flag else 0.0], device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(f, op=dist.ReduceOp.MAX)
        return bool(f.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group: the last thing a run does."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
