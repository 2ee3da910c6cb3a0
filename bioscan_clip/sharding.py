"""One job over the processes of ``accelerate launch`` (or ``torchrun``): each process takes a contiguous shard of
the items, and the main process gathers the shards' results in rank order, so that what it writes is what a
1-process run writes (same rows, same order).

The shards run with no collective between them (no per-batch gather), so a process that fails does not leave the
others blocked inside one: it reports its error and exits, and the launcher (torch's elastic agent, under both
``accelerate launch`` and ``torchrun``) then stops the others. The only collectives are the final gather and, for
a dataset, one barrier while the main process prepares its cache: on a gloo group whose timeout is long enough for
the slowest shard rather than the default 30 minutes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

# A process that finishes its shard first waits this long at the gather for the slowest one. A process that dies
# does not make the others wait this long: the launcher stops them when it sees the failure.
GATHER_TIMEOUT = timedelta(hours=12)


class ShardFailedError(RuntimeError):
    """Another process of the job died before the gather; its own error is what to read."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: what a container or `taskset` grants)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def shard_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of ``rank``'s contiguous shard of ``total`` items: the first ``total % world_size`` shards
    are one item longer (as ``accelerate``'s ``split_between_processes``), and the shards in rank order are the
    items in order.

    Example:

    >>> [shard_bounds(10, rank, 3) for rank in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"expected 0 <= rank < world_size, got rank {rank} of {world_size}")
    base, extra = divmod(total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass(frozen=True)
class ProcessShard:
    """This process's place in a launched job (rank 0 of 1 when not launched).

    Args:
        rank (`int`, defaults to 0): this process's global rank.
        world_size (`int`, defaults to 1): how many processes share the job.
        device (`torch.device`, defaults to CPU): where this process runs its model.
        group (*optional*): the gloo process group :meth:`gather` uses (None when not launched).
        local_size (`int`, defaults to 1): how many of the processes run on this machine (they share its cores).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    group: Any = None
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, total: int) -> tuple[int, int]:
        return shard_bounds(total, self.rank, self.world_size)

    def take(self, items: Sequence[Any]) -> Sequence[Any]:
        """This process's contiguous slice of ``items``."""
        start, stop = self.bounds(len(items))
        return items[start:stop]

    def announce(self, totals: dict[str, int]) -> None:
        """When launched, one line on stderr naming this process's shards (``process 1 of 2: images 4-7 of 7``)."""
        if self.world_size > 1:
            spans = [f"{what} {'-'.join(map(str, self.bounds(n)))} of {n}" for what, n in totals.items() if n]
            print(f"process {self.rank} of {self.world_size}: {', '.join(spans)}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (e.g. preparing a cache), the others after it. If the main process
        fails there, it exits and the launcher stops the ones waiting."""
        if not self.is_main:
            self._barrier()
        yield
        if self.is_main:
            self._barrier()

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def gather(self, value: Any) -> list[Any] | None:
        """Every process's ``value`` in rank order on the main process (None on the others)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        try:
            dist.gather_object(value, gathered, dst=0, group=self.group)
        except RuntimeError as error:  # gloo's "Connection closed by peer": another process died (it said why)
            raise ShardFailedError(
                f"process {self.rank} of {self.world_size}: another process failed (its error is above)"
            ) from error
        return gathered

    def close(self) -> None:
        """Leaves the process group once this process's collectives are done. Without it a process that exits while
        gloo still holds its sending threads can abort at exit ("terminate called without an active exception")."""
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def process_shard() -> ProcessShard:
    """This process's shard of a launched job, from the launcher's environment (``WORLD_SIZE``, ``RANK``).

    Not launched (or launched with one process): rank 0 of 1 on the GPU when there is one. Launched with several:
    Accelerate's :class:`~accelerate.PartialState` joins the process group (NCCL on GPUs, one GPU per process;
    gloo on CPU). Under ``accelerate launch``, torch gets this process's share of the cores rather than the one
    thread that Accelerate's ``OMP_NUM_THREADS=1`` would leave it.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        if "ACCELERATE_MIXED_PRECISION" in os.environ:  # a 1-process `accelerate launch`: it exported 1 thread
            torch.set_num_threads(usable_cores())
        return ProcessShard(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # joins the process group the launcher set up
    local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    if state.device.type == "cpu":  # the machine's cores, shared by its processes (not the 1 Accelerate exports)
        torch.set_num_threads(max(1, usable_cores() // max(1, local)))
    # The gather runs on CPU objects whatever the model's device: a gloo group, with a timeout for the slowest shard.
    group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)
    return ProcessShard(state.process_index, state.num_processes, state.device, group, local)
