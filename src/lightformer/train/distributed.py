"""Process-group plumbing of multi-process training: torchrun's environment, the device of each rank, and the few
collectives the trainer needs (``torch.distributed``: gloo on CPU, nccl on CUDA).

Launch (one process per rank; torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT``)::

    torchrun --standalone --nproc_per_node=2 -m lightformer.cli train --preset tiny --out runs/ddp

``lightformer train`` sees torchrun's variables (``launched_by_torchrun``), calls ``init`` and trains with
``DistributedDataParallel``; without them it is one process and nothing here is used (``SINGLE``).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DEVICES", "Distributed", "SINGLE", "init", "launched_by_torchrun", "resolve_device", "shutdown",
           "unwrap"]

#: values of ``--device``
DEVICES = ("cpu", "cuda", "auto")
#: torchrun's variables that mark a launched worker
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def resolve_device(name: str | torch.device = "cpu", local_rank: int = 0) -> torch.device:
    """``"cpu" | "cuda" | "auto"`` (or a ``torch.device``) -> the device this process trains on.

    ``"auto"`` is CUDA when a CUDA device is present, else CPU. A bare ``"cuda"`` becomes ``cuda:<local_rank>``, the
    GPU of this rank on its node (torchrun's ``LOCAL_RANK``).

    Raises:
        ValueError: a name that is none of ``DEVICES`` (nor a ``cuda:N`` index), or ``cuda`` on a machine without a
            CUDA device; the message names ``device``.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (isinstance(name, str) and name.startswith("cuda:")):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}: no CUDA device is available on this machine (use cpu or auto)")
        device = torch.device(name)
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}: CUDA device {index} requested (local rank {local_rank}), but this "
                             f"machine has {torch.cuda.device_count()}")
        return torch.device("cuda", index)
    raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    """True when this process is a worker started by ``torchrun`` (its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``
    are set)."""
    env = os.environ if environ is None else environ
    return all(key in env for key in TORCHRUN_ENV)


@dataclass(frozen=True)
class Distributed:
    """Where this process sits among the ranks of one run, and its device.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 logs, evaluates its share, and writes checkpoints.
        world_size: number of processes (1 = single-process training, no collective is ever called).
        local_rank: the rank on this node (which GPU a CUDA rank uses).
        device: the device this rank trains on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")

    @property
    def is_main(self) -> bool:
        """True on the rank that logs and writes (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """True when there is more than one rank (gradients are all-reduced)."""
        return self.world_size > 1

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place (every rank gets the sum); returns it. A no-op for one rank.
        The tensor lives on this rank's device (nccl reduces CUDA tensors only)."""
        if self.parallel:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for one rank."""
        if not self.parallel:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op for one rank)."""
        if self.parallel:
            dist.barrier()

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in ``DistributedDataParallel`` (gradients all-reduced and averaged over the ranks during the
        backward); the module itself for one rank.

        ``find_unused_parameters=True`` because some task heads leave parameters out of the graph (the token table
        of a real-valued task, experts no token was routed to); a globally unused parameter keeps ``grad=None``, as
        in one process."""
        if not self.parallel:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None  # CPU modules need None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


#: the single-process run
SINGLE = Distributed()


def init(device: str = "auto", *, timeout_s: float = 600.0) -> Distributed:
    """Join the process group of a torchrun launch (``env://``): nccl when this rank's device is CUDA, else gloo.

    Args:
        device: ``"cpu" | "cuda" | "auto"`` (see ``resolve_device``; CUDA ranks take GPU ``LOCAL_RANK``).
        timeout_s: seconds a collective may wait for the other ranks before failing (a rank that died).

    Raises:
        RuntimeError: torchrun's variables are not set (not a launched worker).
        ValueError: a bad ``device`` (see ``resolve_device``).
    """
    if not launched_by_torchrun():
        raise RuntimeError(f"init: not launched by torchrun ({', '.join(TORCHRUN_ENV)} are not all set)")
    rank, local_rank, world = (int(os.environ[k]) for k in TORCHRUN_ENV)
    where = resolve_device(device, local_rank)
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if where.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Distributed(rank=rank, world_size=world, local_rank=local_rank, device=where)


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
