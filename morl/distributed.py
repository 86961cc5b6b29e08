"""Data-parallel training: the few collective operations morl needs, each a no-op in a single process.

Launch with ``morl fit recipe.yaml --launch N [--accelerate-config F]`` or ``accelerate launch --config_file F -m
morl fit recipe.yaml``; the accelerate config decides DDP, FSDP or DeepSpeed and mixed precision (see
``cookbook/accelerate/``). Without a GPU, ``--launch N`` runs N CPU processes with gloo (plain ``accelerate launch``
needs ``--multi_gpu --num_processes N`` for that). One step under P processes:

1. every process takes a disjoint, contiguous slice of the step's prompts and samples their K completions
   (a prompt's completions stay on one process, so group statistics need no communication);
2. the slices are gathered into **one batch record on every process** (:func:`gather_batch`). Rewards,
   scores, advantages and every controller update then run the single-process code on the same global
   batch: batch whitening, GDPO's z-score, the conciseness running mean, Tchebycheff's ideal point,
   Lagrangian means and CTWA covariances are those of the whole batch, identical on every process and equal
   to a one-process run of the same batch;
3. each process backpropagates only its own rows, weighting its token-mean loss by its share of the global
   mini-batch's completion tokens, so the summed gradient is the gradient of the global token-mean loss
   (:meth:`morl.policy.Policy.backward` undoes DDP's averaging); gradient-level controllers reduce their
   per-objective gradients the same way (:func:`all_reduce_sum`).

Only process 0 writes files and shows the progress bar. With ``torch.distributed`` not initialised (one
process) every function below returns its input or a single-process answer.

Example:
    >>> world_size(), rank(), is_main()
    (1, 0, True)
    >>> all_reduce_sum(torch.tensor([1.0, 2.0]))
    tensor([1., 2.])
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from morl.batch import Batch


def is_distributed() -> bool:
    """More than one process in an initialised ``torch.distributed`` group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by ``accelerate launch`` or ``torchrun`` for data parallelism, sharding or mixed precision."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return True
    if any(env.get(f"ACCELERATE_USE_{kind}", "false").lower() == "true" for kind in ("FSDP", "DEEPSPEED")):
        return True
    return env.get("ACCELERATE_MIXED_PRECISION", "no") not in ("no", "")


def make_accelerator(cpu: bool) -> Any:
    """An ``Accelerator`` configured by the launcher's environment (config file, ``--mixed_precision``, ...).

    Every forward pass of the wrapped model is a collective (DDP syncs buffers, FSDP gathers weights), so every
    process runs as many of them: local shards have equal sizes and evaluation pads its shards.
    """
    from accelerate import Accelerator

    return Accelerator(cpu=cpu)


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def _device() -> torch.device:
    """Where collectives run: the current GPU under NCCL, the CPU under gloo."""
    if torch.distributed.get_backend() == "gloo":
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over processes (a new tensor, same device and dtype); the input in one process."""
    if not is_distributed():
        return values
    out = values.detach().to(_device(), copy=True)
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out.to(values.device)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Elementwise max over processes; the input in one process."""
    if not is_distributed():
        return values
    out = values.detach().to(_device(), copy=True)
    torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX)
    return out.to(values.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable; move tensors to the CPU first), in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Process ``src``'s ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def shard_slice(n: int, what: str = "items") -> slice:
    """This process's contiguous slice of ``n`` items, ``n`` divisible by the number of processes."""
    size = world_size()
    if n % size:
        raise ValueError(f"{n} {what} cannot be split evenly across {size} processes; use a multiple of {size}")
    per = n // size
    return slice(rank() * per, (rank() + 1) * per)


def shard_padded(items: list[Any]) -> tuple[list[Any], int]:
    """This process's strided share of ``items``, padded by repeating an item so every process gets as many
    (sharded models need every process to run the same number of forward passes); returns the share and how
    many of its items are real (the rest are padding to leave out of any statistic)."""
    size = world_size()
    mine = items[rank() :: size]
    per = -(-len(items) // size) if items else 0
    real = len(mine)
    if real < per:
        mine = mine + [items[0]] * (per - real)
    return mine, real


def gather_batch(batch: Batch, pad_token_id: int) -> Batch:
    """Every process's batch record, concatenated in rank order (prompt order), on every process."""
    if not is_distributed():
        return batch
    from morl.batch import concat_batches

    parts = all_gather_objects(batch.to("cpu"))
    device = batch.input_ids.device
    return concat_batches(parts, pad_token_id).to(device)


def gather_rows(values: torch.Tensor) -> torch.Tensor:
    """Per-row values ``[n, ...]`` of every process, concatenated in rank order; per-token values ``[n, L]`` are
    right-padded with 0 to the widest process's L."""
    if not is_distributed():
        return values
    parts = all_gather_objects(values.detach().cpu())
    if values.dim() == 2:
        width = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]
    return torch.cat(parts).to(values.device)
