"""Training on several processes: torchrun's ranks, their process group, what they exchange.

Book chapter: "Assembling PaliGemma".

    torchrun --nproc_per_node=2 -m pgemma.train --out runs/shapes

torchrun starts N copies of the trainer and gives each, in environment variables, its RANK, the
WORLD_SIZE N and where the ranks meet (MASTER_ADDR, MASTER_PORT). Each step's global batch is
the same on every rank, and each rank takes its slice of it (`shard`):

- stage 1 and fine-tuning (`pgemma.train.finetune`) are data-parallel: each rank computes the
  gradients of its slice, and an all-reduce averages them (`average_gradients`), so every rank
  takes the AdamW step one process would take on the whole batch, and the ranks' weights stay equal;
- stage 0's sigmoid loss pairs every image with every caption: `pgemma.contrastive.ring_sigmoid_loss`
  passes the caption embeddings around the ranks, so that no rank holds the B x B matrix.

Each rank's loss is written so that the mean over the ranks is the loss of the whole batch
(`global_mean` for a mean over a count that differs between slices, such as answer tokens); with
the gradients averaged, the step equals one process's up to the rounding of the sums.

Only rank 0 touches the run folder (lock, recipe, checkpoints, curves, model/ or adapter/) and evaluates;
every rank resumes from the checkpoints it wrote. A rank that fails makes the others stop: gloo
sees a closed connection at once, and the process group's timeout ends the wait for a rank that
hangs; each rank then stops with a `DistributedError` naming it.

Without torchrun's variables (or with WORLD_SIZE=1) there is one process, no process group, and
each function here returns its input: the trainer computes exactly what it computed before.
"""

import argparse
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

DEFAULT_TIMEOUT = 600.0  # seconds a rank waits for the others (rank 0's evaluations included)

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A rank stopped because it, or another rank, failed or did not answer in time."""


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a training command about its processes: torch's CPU threads, and how long a
    rank waits for the others under torchrun."""
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="under torchrun: seconds a rank waits for the others before it stops",
    )


def world_size() -> int:
    """The number of ranks training together (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1 (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes and evaluates."""
    return rank() == 0


@contextmanager
def process_group(timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Join torchrun's process group for the `with` block; without torchrun, do nothing.

    The trainer computes on the CPU, so its tensors travel through gloo; CUDA tensors would go
    through nccl where CUDA is present. A collective that waits more than `timeout` seconds
    fails. Any error in the block becomes a DistributedError naming this rank: when another
    rank failed first, the error here is a lost connection or the timeout, and that rank's own
    message says what happened.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))  # reads torchrun's variables
    try:
        yield
    except RuntimeError as error:
        raise DistributedError(
            f"rank {rank()} of {world_size()} stopped: {error}\n(if that is a lost connection or a wait longer "
            f"than the timeout of {timeout:g} s, another rank stopped first: its own message says why)"
        ) from error
    finally:
        dist.destroy_process_group()


def shard(items: Sequence[T]) -> Sequence[T]:
    """This rank's slice of a global batch: rank r of D takes items r*b .. r*b + b - 1, b = B / D."""
    ranks = world_size()
    if len(items) % ranks:
        raise ValueError(
            f"a batch of {len(items)} does not split evenly over {ranks} ranks: choose a batch size "
            f"that is a multiple of --nproc_per_node"
        )
    size = len(items) // ranks
    return items[rank() * size : (rank() + 1) * size]


def average_gradients(module: nn.Module) -> None:
    """Replace every gradient of `module` by its mean over the ranks (one all-reduce).

    The gradients travel as one flat vector: one message per step instead of one per tensor.
    """
    if world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]  # the same on every rank
    flat = torch.cat([g.reshape(-1) for g in grads])  # (N,)
    dist.all_reduce(flat)
    flat /= world_size()
    for grad, mean in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(mean.view_as(grad))


def global_mean(local_mean: torch.Tensor, local_count: torch.Tensor) -> torch.Tensor:
    """This rank's share of a mean over a whole batch whose slices hold different counts.

    `local_mean` averages `local_count` terms of this rank's slice (answer tokens, say). The
    result's mean over the ranks is the mean of all the terms, (sum of the local sums) / (total
    count), so that averaged gradients are the whole batch's.
    """
    if world_size() == 1:
        return local_mean
    total = local_count.detach().float().clone()
    dist.all_reduce(total)
    return local_mean * local_count * world_size() / total.clamp(min=1)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a detached tensor over the ranks (the loss to print)."""
    if world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def on_main(fn: Callable[[], dict]) -> dict:
    """`fn()` on rank 0, its result (a JSON object) sent to every rank; the others wait meanwhile."""
    if world_size() == 1:
        return fn()
    data = torch.frombuffer(bytearray(json.dumps(fn()).encode()), dtype=torch.uint8) if is_main() else None
    length = torch.tensor([len(data) if is_main() else 0])
    dist.broadcast(length, src=0)
    if not is_main():
        data = torch.empty(int(length), dtype=torch.uint8)
    dist.broadcast(data, src=0)
    return json.loads(data.numpy().tobytes())


def barrier() -> None:
    """Wait until every rank gets here."""
    if world_size() > 1:
        dist.barrier()
