"""Several processes, on one machine or many: the one mechanism of every stage that splits its work
(Step 1 and features split videos; training splits each batch and each validation).

Everything between processes goes through Lightning Fabric: it starts the
processes (or joins those that ``torchrun`` or SLURM started: Fabric
recognises both from their environment variables), gives each its own device
(``cuda:<local rank>``, or the CPU), and moves values between them
(``all_gather``, ``broadcast``). Nothing in ``vera`` calls ``torch.distributed``.

``launch(accelerator, devices, num_nodes, device)`` returns this process's
``Ranks`` for Step 1 and features; with ``--devices 1 --num-nodes 1`` (the
default) nothing is launched: one process on ``--device``. Training builds its
Fabric with ``make_fabric`` (adding its checkpoint and log plugins) and wraps
it with ``Ranks.of``.

Ranks that finish hours apart (videos of different lengths) wait for each other
in a collective: the strategy's process-group timeout is set to
``WAIT_FOR_OTHER_RANKS`` instead of Lightning's default 30 minutes. A failure on
one rank is passed to all at their next meeting (``together``,
``gather_checked``, ``on_main``), so that none waits for a rank that has died.
"""

from __future__ import annotations

import json
import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

from vera.errors import VeraError

# How long a rank that has finished its work waits for the slowest one.
WAIT_FOR_OTHER_RANKS = timedelta(days=7)

T = TypeVar("T")


@dataclass
class Ranks:
    """This process's place among the processes of a run (one process when none was launched)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "auto"
    fabric: Any = field(default=None, repr=False, compare=False)  # the launched Fabric (None: nothing launched)

    @classmethod
    def of(cls, fabric: Any) -> Ranks:
        """The ranks of a launched Fabric."""
        return cls(rank=fabric.global_rank, world_size=fabric.world_size, local_rank=fabric.local_rank,
                   device=str(fabric.device), fabric=fabric)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    # -- splitting work

    def share(self, items: list[T]) -> list[T]:
        """This rank's items: positions ``rank, rank + world_size, …`` (all of them for one process)."""
        return items[self.rank :: self.world_size]

    def merge(self, shares: list[list]) -> list:
        """Undo ``share``: the gathered per-rank lists back in their original order."""
        merged: list = [None] * sum(len(part) for part in shares)
        for rank, part in enumerate(shares):
            merged[rank :: self.world_size] = part
        return merged

    def summary_name(self, name: str) -> str:
        """``summary.json`` → ``summary.rank-1-of-4.json``: the file of this rank's own summary."""
        stem, dot, suffix = name.rpartition(".")
        return f"{stem}.rank-{self.rank}-of-{self.world_size}{dot}{suffix}"

    # -- collectives (every rank must make the same calls in the same order)

    def broadcast(self, value: Any, src: int = 0) -> Any:
        """``value`` from rank ``src`` on every rank."""
        return self.fabric.broadcast(value, src=src) if self.active else value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (anything JSON can hold), in rank order, on every rank.

        ``all_gather`` moves tensors of one shape: each rank sends its value as
        UTF-8 JSON bytes, padded to the longest, after the lengths themselves.
        The tensors live on ``fabric.device``: NCCL moves GPU tensors only.
        """
        if not self.active:
            return [value]
        import torch

        payload = json.dumps(value, ensure_ascii=False).encode("utf-8")
        device = self.fabric.device
        with warnings.catch_warnings():
            # Lightning 2.6 gathers through a torch function that recent torch calls deprecated, once per call.
            warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
            lengths = self.fabric.all_gather(torch.tensor(len(payload), dtype=torch.int64, device=device))
            lengths = lengths.cpu().tolist()
            padded = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
            padded[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            rows = self.fabric.all_gather(padded).cpu()
        return [json.loads(bytes(row[:length].tolist()).decode("utf-8")) for row, length in zip(rows, lengths)]

    def gather_checked(self, work: Callable[[], T]) -> list[T]:
        """Run ``work`` on every rank and gather the results (JSON values), in rank order, on every rank.

        A failure on any rank is raised on every rank (as a ``VeraError``
        naming it), so that no rank waits forever for one that failed.
        """
        if not self.active:
            return [work()]
        return [_unwrap(outcome) for outcome in self.gather(self._outcome(work))]

    def merged_summary(self, kind: type[T], work: Callable[[], T]) -> T:
        """``gather_checked`` of a summary (a dataclass ``kind`` of this rank's counts, lists and dicts), merged
        into the run's summary on every rank: numbers add up, lists are joined and dicts (or Counters) updated in
        rank order; ``seconds`` is the slowest rank's and ``processes`` the number of ranks."""
        total = kind(processes=self.world_size)
        # Field by field (not asdict, which turns a Counter's items into keys).
        for part in self.gather_checked(lambda: vars(work())):
            for name, value in part.items():
                if name == "seconds":
                    total.seconds = max(total.seconds, value)
                elif isinstance(value, list):
                    getattr(total, name).extend(value)
                elif isinstance(value, dict):
                    getattr(total, name).update(value)  # a Counter adds the counts up
                elif name != "processes":
                    setattr(total, name, getattr(total, name) + value)
        return total

    def together(self, work: Callable[[], T]) -> T:
        """Run ``work`` on every rank and return this rank's result (anything: only success or failure
        travels); a failure on any rank is raised on every rank, as in ``gather_checked``."""
        if not self.active:
            return work()
        kept: list[T] = []
        self.gather_checked(lambda: kept.append(work()))
        return kept[0]

    def on_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on rank 0 only and give its result (or its failure) to every rank."""
        if not self.active:
            return work()
        return _unwrap(self.broadcast(self._outcome(work) if self.is_main else None))

    def _outcome(self, work: Callable[[], Any]) -> list:
        """``[True, work()]``, or ``[False, message]``: any exception is passed on this way (its traceback
        printed here first), so the other ranks stop too instead of waiting forever."""
        try:
            return [True, work()]
        except VeraError as error:
            return [False, str(error)]
        except Exception as error:  # any crash: the others must hear of it instead of waiting
            traceback.print_exc()
            return [False, f"rank {self.rank} failed: {type(error).__name__}: {error}"]

    # -- output folders

    def open_folder(self, folder: Any) -> Any:
        """Open a ``vera.runs.RunFolder`` so that no two processes clear or record one folder at once.

        Rank 0 opens first: it alone clears the old outputs (``--overwrite``)
        and writes ``run.json``. Then the first process of every other
        machine, which finds that record on a shared file system and resumes,
        or prepares its own machine's folder where the file system is not
        shared; then all the others, which find the record and resume.
        Rank 0 alone holds the folder's lock: the ranks of a run are one writer.
        """
        phase = 0 if self.rank == 0 else 1 if self.local_rank == 0 else 2
        for step in range(3 if self.active else 1):
            self.together(lambda step=step: folder.open(hold=self.is_main) if phase == step else None)
        return folder


def _unwrap(outcome: list) -> Any:
    succeeded, value = outcome
    if not succeeded:
        raise VeraError(value)
    return value


def check_device_options(device: str, accelerator: str, devices: int, num_nodes: int) -> None:
    """``--device`` names one device of one process; launching several is ``--accelerator/--devices/--num-nodes``."""
    if device != "auto" and (devices > 1 or num_nodes > 1 or accelerator != "auto"):
        raise VeraError(f"--device {device} names one device for a single process; with --devices, --num-nodes "
                        "or --accelerator leave --device out (each process takes its own device)")


def make_fabric(accelerator: str = "auto", devices: int = 1, num_nodes: int = 1, *, start_method: str = "popen",
                plugins: list | None = None, loggers: list | None = None) -> Any:
    """A (not yet launched) Fabric for ``devices`` processes on each of ``num_nodes`` machines: DDP with the
    long timeout when more than one in all. ``start_method`` is how Fabric starts the other processes of one
    machine: ``popen`` runs the script again; ``fork`` and ``spawn`` run a function (``fabric.launch(fn)``)."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    strategy = (DDPStrategy(start_method=start_method, timeout=WAIT_FOR_OTHER_RANKS) if devices * num_nodes > 1
                else "auto")
    try:
        return Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                      plugins=plugins, loggers=loggers)
    except (ValueError, RuntimeError) as error:  # Lightning's word on an accelerator/devices it cannot provide
        raise VeraError(f"--accelerator {accelerator} --devices {devices} --num-nodes {num_nodes}: "
                        f"{str(error).splitlines()[0]}") from None


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
    fabric = make_fabric(accelerator, devices, num_nodes)
    fabric.launch()
    release_at_exit()
    return Ranks.of(fabric)


def release_at_exit() -> None:
    """Destroy this process's process group when it exits.

    Lightning does so only for NCCL; a gloo group left to the interpreter's
    shutdown can abort a rank after its work is done (seen under torchrun).
    """
    import atexit

    from lightning.fabric.utilities.distributed import _destroy_dist_connection

    atexit.register(_destroy_dist_connection)
