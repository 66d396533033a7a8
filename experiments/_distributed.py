"""Data-parallel training under ``torchrun``; the same code runs as a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn


def setup(device: str) -> tuple[int, int]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1).

    gloo on CPU, nccl on CUDA. Returns ``(rank, world_size)``; ``(0, 1)`` otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_true(flag: bool, device) -> bool:
    """``flag`` OR-ed over all processes (every process takes the same branch)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch over all processes.

    With plain BatchNorm each process would normalize by its own slice of the batch, so
    ``N`` processes with batch ``B/N`` would compute a different function from one process
    with batch ``B``. Here the per-channel sums ``Σx`` and ``Σx²`` and the counts are
    all-reduced with an autograd-aware all-reduce: forward and backward are those of one
    BatchNorm over the whole global batch, on any backend (``torch.nn.SyncBatchNorm``
    needs a GPU). In eval mode, or in a single process, it is ``nn.BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        n_local = torch.tensor([float(x.shape[0] * x.shape[2] * x.shape[3])], device=x.device)
        stats = torch.cat([x.sum(dim=(0, 2, 3)), x.pow(2).sum(dim=(0, 2, 3)), n_local])
        stats = dist_fn.all_reduce(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.pow(2)).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = (x - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def globalize_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by :class:`GlobalBatchNorm2d` in place,
    keeping its parameters and running statistics."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine).to(
                child.weight.device
            )
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            globalize_batchnorm(child)
    return module
