"""Start a training run: Lightning Fabric launches the processes, each runs Algorithm 1 (``algorithm1``).

Fabric, not Lightning's ``Trainer``: the ``Trainer`` cannot resume this loop exactly (it skips a validation a
kill cut short, reshuffles a restarted epoch), and its DDP wants a module with gradients, which a frozen VLM lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lightning.fabric import Fabric

from vera.distributed import Ranks, make_fabric, release_at_exit
from vera.learning.algorithm1 import VerbalizedLearning
from vera.learning.fabric_io import JSONCheckpointIO, RunCSVLogger
from vera.learning.run_state import BEST_FILE, TrainingState
from vera.learning.settings import TrainingOptions
from vera.vlm.backends.base import VLMBackend


def train(options: TrainingOptions, make_backend: Callable[[str], VLMBackend], *, accelerator: str = "auto",
          devices: int = 1, num_nodes: int = 1, start_method: str = "popen", input_workers: int = 0,
          progress: bool = True) -> TrainingState:
    """Run (or resume) verbalized learning into ``options.output``; returns the final state (rank 0's).

    Launches ``devices`` processes per node through Lightning Fabric (DDP when
    more than one in all; ``start_method`` as in ``vera.distributed.make_fabric``,
    e.g. ``fork``). Options, lists and the output folder are checked before
    ``make_backend`` loads the model on this process's device (``cuda:1``, ``cpu`` …).
    Each process reads its frames with ``input_workers`` worker processes of its own (0: in process).
    """
    options.check()
    fabric = make_fabric(accelerator, devices, num_nodes, start_method=start_method,
                         plugins=[JSONCheckpointIO()], loggers=[RunCSVLogger(Path(options.output))])
    return fabric.launch(_train_process, options, make_backend, input_workers, progress)


def _train_process(fabric: Fabric, options: TrainingOptions, make_backend: Callable[[str], VLMBackend],
                   input_workers: int, progress: bool) -> TrainingState:
    """What each process runs, once Fabric has started them all."""
    if fabric.world_size > 1:
        release_at_exit()
    learning = VerbalizedLearning(options, Ranks.of(fabric), input_workers=input_workers, progress=progress)
    state = learning.run(make_backend(str(fabric.device)))
    for logger in fabric.loggers:
        logger.finalize("success")
    fabric.print(summary(state, options))
    return state


def summary(state: TrainingState, options: TrainingOptions) -> str:
    """One line for the end of a run."""
    best = state.best
    return (f"{state.step} steps, {state.rejected_updates} optimizer answers rejected, "
            f"{state.skipped_videos} unreadable videos skipped; best questions (validation {options.select_by} "
            f"{best.metric} at step {best.step}) in {Path(options.output) / BEST_FILE}")
