"""What the training run's Lightning Fabric writes: JSON checkpoints and one CSV log per run.

The processes and what passes between them are ``vera.distributed``'s; these
are the plugins training adds to its Fabric. ``fabric.save`` writes on rank 0
and holds every rank at a barrier until it is written. Why Fabric and not the
``Trainer``: see ``vera.learning.launch``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.fabric.loggers import CSVLogger
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from vera.errors import VeraError
from vera.io import read_json, write_json_atomic, write_text_atomic

LOG_NAME = "logs"
LOG_VERSION = 0  # one version per run folder: a resumed run continues it


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
