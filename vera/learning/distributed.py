"""Lightning Fabric plumbing of the training loop: processes, collectives, JSON checkpoints, one CSV log.

Everything distributed goes through Fabric (``launch``, ``broadcast``,
``all_gather``, and ``save``, which writes on rank 0 and holds every rank at a
barrier until it is written); nothing here calls ``torch.distributed``.
Why Fabric and not the ``Trainer``: see ``vera.learning.loop``.
"""

from __future__ import annotations

import csv
import io
import json
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.loggers import CSVLogger
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from vera.errors import VeraError
from vera.io import read_json, write_json_atomic, write_text_atomic

LOG_NAME = "logs"
LOG_VERSION = 0  # one version per run folder: a resumed run continues it


# --------------------------------------------------------------------------- processes


def make_fabric(output: Path, *, accelerator: str = "auto", devices: int = 1, num_nodes: int = 1,
                strategy: str | None = None) -> Fabric:
    """A Fabric for ``devices`` processes on each of ``num_nodes`` machines (DDP when more than one in all,
    unless ``strategy`` says otherwise), saving checkpoints as JSON and logging to
    ``<output>/logs/version_0/metrics.csv``."""
    try:
        return Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                      strategy=strategy or ("ddp" if devices * num_nodes > 1 else "auto"),
                      plugins=[JSONCheckpointIO()], loggers=[RunCSVLogger(output)])
    except (ValueError, RuntimeError) as error:  # Lightning's word on an accelerator/devices it cannot provide
        raise VeraError(f"--accelerator {accelerator} --devices {devices} --num-nodes {num_nodes}: "
                        f"{str(error).splitlines()[0]}") from None


class Ranks:
    """This process's place among the Fabric processes, and the collectives the loop needs."""

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        self.rank = fabric.global_rank
        self.world_size = fabric.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def broadcast(self, value: Any, src: int = 0) -> Any:
        """``value`` from rank ``src`` on every rank."""
        return self.fabric.broadcast(value, src=src) if self.active else value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (anything JSON can hold), in rank order, on every rank.

        ``all_gather`` moves tensors of one shape: each rank sends its value as
        UTF-8 JSON bytes, padded to the longest, after the lengths themselves.
        """
        if not self.active:
            return [value]
        payload = json.dumps(value, ensure_ascii=False).encode("utf-8")
        with warnings.catch_warnings():
            # Lightning 2.6 gathers through a torch function that recent torch calls deprecated, once per call.
            warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
            lengths = self.fabric.all_gather(torch.tensor(len(payload), dtype=torch.int64)).cpu().tolist()
            padded = torch.zeros(max(lengths), dtype=torch.uint8)
            padded[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            rows = self.fabric.all_gather(padded).cpu()
        return [json.loads(bytes(row[:length].tolist()).decode("utf-8")) for row, length in zip(rows, lengths)]

    def gather_checked(self, work: Callable[[], Any]) -> list[Any]:
        """Run ``work`` on every rank and gather the results; a failure on any rank is raised on all
        (as ``VeraError``), so no rank is left waiting for one that failed."""
        return [_unwrap(outcome) for outcome in self.gather(self._outcome(work))]

    def on_main(self, work: Callable[[], Any]) -> Any:
        """Run ``work`` on rank 0 only and give its result (or its failure) to every rank."""
        return _unwrap(self.broadcast(self._outcome(work) if self.is_main else None))

    def share(self, items: list) -> list:
        """This rank's items: positions ``rank, rank + world_size, …``."""
        return items[self.rank :: self.world_size]

    def merge(self, shares: list[list]) -> list:
        """Undo ``share``: the gathered per-rank lists back in their original order."""
        merged: list = [None] * sum(len(part) for part in shares)
        for rank, part in enumerate(shares):
            merged[rank :: self.world_size] = part
        return merged

    def save(self, path: Path, state: dict) -> None:
        """Write a checkpoint (rank 0; every rank waits for it)."""
        self.fabric.save(path, state)

    def _outcome(self, work: Callable[[], Any]) -> list:
        """``[True, work()]``, or ``[False, message]``. Under DDP any exception is passed on this way
        (its traceback printed here first), so the other ranks stop too instead of waiting forever."""
        try:
            return [True, work()]
        except VeraError as error:
            return [False, str(error)]
        except Exception as error:
            if not self.active:
                raise
            traceback.print_exc()
            return [False, f"rank {self.rank} failed: {type(error).__name__}: {error}"]


def _unwrap(outcome: list) -> Any:
    succeeded, value = outcome
    if not succeeded:
        raise VeraError(value)
    return value


# --------------------------------------------------------------------------- checkpoints


class JSONCheckpointIO(CheckpointIO):
    """``fabric.save``/``load`` as JSON: the training state is text and counters, readable by anyone.

    Written atomically (temp file + rename), so a kill leaves the previous checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Path, storage_options: Any | None = None) -> None:
        write_json_atomic(Path(path), checkpoint)

    def load_checkpoint(self, path: Path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        data = read_json(Path(path), "checkpoint")
        if not isinstance(data, dict):
            raise VeraError(f"checkpoint {path} does not hold a JSON object; use --overwrite to start again")
        return data

    def remove_checkpoint(self, path: Path) -> None:
        Path(path).unlink(missing_ok=True)


# --------------------------------------------------------------------------- the CSV log


class _AppendingWriter(_ExperimentWriter):
    """Lightning's CSV writer, except that it continues an existing ``metrics.csv`` (Lightning's deletes it)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """A new column rewrites the whole file: atomically, so a kill cannot lose the rows already there."""
        with open(self.metrics_file_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        write_text_atomic(Path(self.metrics_file_path), _csv_text(fieldnames, rows))


class RunCSVLogger(CSVLogger):
    """``<output>/logs/version_0/metrics.csv``, one row per logging call, written at once; a resumed run
    appends to the same file (after ``trim_metrics`` removed the rows of work the checkpoint does not cover)."""

    def __init__(self, output: Path):
        super().__init__(root_dir=output, name=LOG_NAME, version=LOG_VERSION, flush_logs_every_n_steps=1)

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def metrics_path(output: Path) -> Path:
    return Path(output) / LOG_NAME / f"version_{LOG_VERSION}" / _ExperimentWriter.NAME_METRICS_FILE


def trim_metrics(output: Path, keep: Callable[[dict[str, str]], bool]) -> None:
    """Keep only the rows of ``metrics.csv`` that ``keep`` accepts (atomically)."""
    path = metrics_path(output)
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields, rows = list(reader.fieldnames or []), list(reader)
    kept = [row for row in rows if keep(row)]
    if len(kept) != len(rows):
        write_text_atomic(path, _csv_text(fields, kept))


def _csv_text(fields: list[str], rows: list[dict]) -> str:
    """Rows as Lightning's writer puts them in a file (csv's defaults: ``\\r\\n`` line ends)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
