"""Multi-process training through torchrun: DistributedDataParallel, NCCL on GPUs and gloo on the CPU.

    torchrun --nproc_per_node=N run_kd.py RECIPE.yaml

Each rank trains on its own shard of every batch (the recipe's batch_size is the global batch), the
teacher runs on each rank's shard, metrics are summed over ranks, and only rank 0 writes files.
Without torchrun's environment (WORLD_SIZE unset or 1) everything here is a no-op.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Distributed:
    """Join the process group torchrun set up (once per process); single-process runs get the defaults."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        gpu = torch.cuda.is_available() and device_name != "cpu"
        if gpu:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if gpu else "gloo")
    return Distributed(rank, world_size, local_rank)


def broadcast(value, src: int = 0):
    """Rank `src`'s value on every rank (e.g. the run directory only rank 0 created)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_ddp(distiller: torch.nn.Module, hw, ctx: Distributed) -> torch.nn.Module:
    """DistributedDataParallel around a distiller (student and extra modules; the teacher is not part of it)."""
    if not ctx.active:
        return distiller
    from torch.nn.parallel import DistributedDataParallel

    ids = [hw.device.index] if hw.device.type == "cuda" else None
    synced = distiller.buffers_synced_by_the_method()
    if synced:  # DDP broadcasts every other buffer (BatchNorm statistics) from rank 0 at each forward
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(distiller, synced)
    return DistributedDataParallel(distiller, device_ids=ids,
                                   find_unused_parameters=distiller.may_leave_parameters_unused())
