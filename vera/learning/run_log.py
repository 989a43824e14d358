"""What a training run reports as it goes: the CSV log's rows, the progress display and its lines.

On a terminal ``vera.progress`` draws bars; in a log file each step and each
validation is one line.
"""

from __future__ import annotations

from vera.progress import Progress, progress


def step_row(record: dict, skipped_videos: int) -> dict:
    """The CSV log's row of a training step (``history.jsonl``'s record)."""
    return {"train_accuracy": record["train_accuracy"], "update_accepted": record["update_accepted"],
            "skipped_videos": skipped_videos, "epoch": record["epoch"]}


def validation_row(result: dict, best_metric: float | None) -> dict:
    """The CSV log's row of a validation (``validation.jsonl``'s record)."""
    return {"val_accuracy": result["accuracy"], "val_auc": result["auc"], "best_metric": best_metric,
            "val_skipped": len(result["skipped"])}


def is_validation_row(row: dict[str, str]) -> bool:
    """A row read back from the CSV log is a validation's when it has a ``val_skipped`` value."""
    return bool(row.get("val_skipped"))


def step_line(record: dict, total: int, best: float | None) -> str:
    return (f"step {record['step']}/{total} (epoch {record['epoch']}): train accuracy {record['train_accuracy']}, "
            f"update {record['update_status']}, best {best}")


def validation_line(result: dict) -> str:
    return (f"validation @ step {result['step']}: accuracy {result['accuracy']}, auc {result['auc']}"
            f"{', selected' if result['selected'] else ''}")


def training_progress(total: int, done: int, enabled: bool) -> Progress:
    """The run's display: one tick per training step."""
    return progress(total=total, initial=min(done, total), desc="training", unit="step", enabled=enabled)


def validation_progress(step: int, videos: int, enabled: bool) -> Progress:
    """One validation's display, one tick per video; closed with ``validation_line``."""
    return progress(total=videos, desc=f"validation @ step {step}", unit="video", enabled=enabled, leave=False)

