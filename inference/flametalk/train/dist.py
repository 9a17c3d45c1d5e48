"""Multi-process training on torch.distributed (launched by torchrun), not a home-made engine.

`torchrun --nproc_per_node N [--nnodes M ...] -m flametalk train CONFIG` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; every process then joins the default process group (NCCL on CUDA, gloo on CPU), wraps
the objective in DistributedDataParallel, and reads its shard of each global batch through DistributedSampler.
Without those variables training runs in one process and nothing here starts a process group.
"""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ..errors import FlameTalkError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _device_for(pref: str, local_rank: int, distributed: bool) -> torch.device:
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise FlameTalkError(f"run.device is {pref!r} but CUDA is not available; use cpu")
    if pref in ("auto", "cuda") or distributed:  # under torchrun each process owns cuda:LOCAL_RANK
        return torch.device("cuda", local_rank)
    return torch.device(pref)


def init_distributed(device_pref: str = "auto", timeout_s: int = 1800) -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device_for(device_pref, local_rank, world > 1)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world, local_rank, device)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP over the trainable parameters (frozen ones are skipped by DDP itself). Buffers are not broadcast:
    every process computes them identically from the same data and config."""
    if not ctx.distributed:
        return module
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # Newer torch renames the switch (and still syncs once at start, harmless here: buffers are equal anyway).
    new_name = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if new_name else {"broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=ids, **no_sync)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def shard_batches(n_items: int, per_rank_batch: int, epoch: int, seed: int, ctx: DistContext) -> list[list[int]]:
    """This process's batches of one epoch. The epoch's permutation is the same for every world size, and rank r
    takes every world-th item: batch j of all ranks together is items [j*B, (j+1)*B) of the permutation (B the
    global batch), so N processes see exactly the global batches one process would."""
    sampler = DistributedSampler(range(n_items), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    idx = list(sampler)
    return [idx[i * per_rank_batch : (i + 1) * per_rank_batch] for i in range(len(idx) // per_rank_batch)]


def all_reduce_mean(values: dict[str, float], ctx: DistContext, device: torch.device) -> dict[str, float]:
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}
