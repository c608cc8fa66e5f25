"""DDP plumbing for ``torchrun``: process group, device, gathering, rank-0 writes."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool  # this process created the group, so it tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | None = None) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else single process.

    nccl on CUDA, gloo on CPU. ``device`` forces "cpu" (tests, or CPU-only nodes with GPUs
    reserved for other jobs); by default CUDA is used when available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
        owns = True
        logger.info("DDP: rank %d/%d on %s (%s)", rank, world, dev, dist.get_backend())
    return Dist(rank, world, local_rank, dev, owns)


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def gather_object(d: Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj`` on every rank, in rank order (single process: [obj])."""
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def shard(d: Dist, n: int) -> list[int]:
    """Positions 0..n-1 this rank handles for evaluation (strided; no padding, no duplicates)."""
    return list(range(d.rank, n, d.world))


def gather_sharded(d: Dist, local: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble per-rank results of ``shard(d, n)`` into the original order of n items."""
    if d.world == 1:
        return local
    parts = gather_object(d, local.cpu())
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::d.world] = part
    return out


def broadcast_object(d: Dist, obj: Any) -> Any:
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
