"""One process per device, on one machine or many, for the stages that split videos (Step 1, features).

``launch(accelerator, devices, num_nodes, device)`` returns this process's
``Ranks``. With ``--devices 1 --num-nodes 1`` (the default) nothing is
launched: one process on ``--device``. Otherwise Lightning Fabric (strategy
``ddp``) starts the processes, or joins those that ``torchrun`` or SLURM
started (Fabric recognises both from their environment variables), and each
process gets its own device (``cuda:<local rank>``, or the CPU).

The ranks split the videos (rank ``r`` of ``W`` takes every ``W``-th video
from the ``r``-th), write their own per-video files and summary, and meet
twice: after rank 0 has opened the output folder, and at the end, when rank 0
merges the summaries. Those meetings go through a CPU (gloo) process group of
our own with a long timeout: ranks finish hours apart when their videos
differ in length, and a GPU (NCCL) collective would time out after Lightning's
default 30 minutes.
"""

from __future__ import annotations

import atexit
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from vera.errors import VeraError

# How long a rank that has finished its videos waits for the slowest one.
WAIT_FOR_OTHER_RANKS = timedelta(days=7)

T = TypeVar("T")


@dataclass
class Ranks:
    """This process's place among the processes of a run (one process when none was launched)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "auto"
    group: Any = None  # the gloo process group of our own messages (None: one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def share(self, items: list[T]) -> list[T]:
        """This rank's items: positions ``rank, rank + world_size, …`` (all of them for one process)."""
        return items[self.rank :: self.world_size]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value, group=self.group)
        return gathered

    def together(self, work: Callable[[], T]) -> T:
        """Run ``work`` on every rank and return this rank's result.

        A failure on any rank is raised on every rank (as a ``VeraError``
        naming it), so that no rank waits forever for one that failed.
        """
        if not self.active:
            return work()
        result: Any = None
        try:
            result, outcome = work(), (True, "")
        except VeraError as error:
            outcome = (False, str(error))
        except Exception as error:  # any crash: the others must hear of it instead of waiting
            traceback.print_exc()
            outcome = (False, f"rank {self.rank} failed: {type(error).__name__}: {error}")
        for succeeded, message in self.gather(outcome):
            if not succeeded:
                raise VeraError(message)
        return result

    def gather_checked(self, work: Callable[[], T]) -> list[T]:
        """``together``, then every rank's result, in rank order, on every rank."""
        return self.gather(self.together(work))

    def open_folder(self, folder: Any) -> Any:
        """Open a ``vera.runs.RunFolder`` so that no two processes clear or record one folder at once.

        Rank 0 opens first: it alone clears the old outputs (``--overwrite``)
        and writes ``run.json``. Then the first process of every other
        machine, which finds that record on a shared file system and resumes,
        or prepares its own machine's folder where the file system is not
        shared; then all the others, which find the record and resume.
        """
        phase = 0 if self.rank == 0 else 1 if self.local_rank == 0 else 2
        for step in range(3 if self.active else 1):
            self.together(lambda step=step: folder.open() if phase == step else None)
        return folder

    def summary_name(self, name: str) -> str:
        """``summary.json`` → ``summary.rank-1-of-4.json``: the file of this rank's own summary."""
        stem, dot, suffix = name.rpartition(".")
        return f"{stem}.rank-{self.rank}-of-{self.world_size}{dot}{suffix}"


def check_device_options(device: str, accelerator: str, devices: int, num_nodes: int) -> None:
    """``--device`` names one device of one process; launching several is ``--accelerator/--devices/--num-nodes``."""
    if device != "auto" and (devices > 1 or num_nodes > 1 or accelerator != "auto"):
        raise VeraError(f"--device {device} names one device for a single process; with --devices, --num-nodes "
                        "or --accelerator leave --device out (each process takes its own device)")


def launch(accelerator: str = "auto", devices: int = 1, num_nodes: int = 1, device: str = "auto") -> Ranks:
    """Start (or join) the processes of this run and return this one's ``Ranks``; see the module docstring."""
    check_device_options(device, accelerator, devices, num_nodes)
    if devices == 1 and num_nodes == 1:
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if launched > 1:
            raise VeraError(f"this is one of {launched} processes started together (WORLD_SIZE={launched}, e.g. by "
                            "torchrun), but --devices 1 --num-nodes 1: give --devices (processes per machine) and "
                            "--num-nodes to match the launch")
        return Ranks(device=device if device != "auto" else accelerator)
    import torch.distributed as dist
    from lightning.fabric import Fabric

    try:
        fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp")
    except (ValueError, RuntimeError) as error:  # Lightning's word on devices it cannot provide
        raise VeraError(f"--accelerator {accelerator} --devices {devices} --num-nodes {num_nodes}: {error}") from None
    fabric.launch()
    group = dist.new_group(backend="gloo", timeout=WAIT_FOR_OTHER_RANKS)
    # Left to the interpreter's shutdown, the process groups' threads abort the process (seen under torchrun).
    atexit.register(_close_process_groups)
    return Ranks(rank=fabric.global_rank, world_size=fabric.world_size, local_rank=fabric.local_rank,
                 device=str(fabric.device), group=group)


def _close_process_groups() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
