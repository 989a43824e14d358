"""Progress of long jobs: a bar on a terminal, plain log lines anywhere else.

A tqdm bar redraws itself with carriage returns, which turns a log file (a
cluster job, ``nohup``, ``| tee``) into one enormous line. When the stream is
not a terminal, ``progress`` writes instead a line such as::

    step 1: 120/3400 segments (3.5%), 2.1/s, eta 26 min

at most every ``log_every_s`` seconds and once at the end. Where each unit of
work has results worth a line of its own (a training step), ``update`` takes
that line as ``message`` and logs it at once, with the rate and eta, in place
of the periodic count. Every stage uses this helper, so every stage logs the
same way. ``unit_scale=True`` shows counts and rates with SI prefixes, as
for bytes (``archive: 12.3 MB/45.6 MB (27.0%), 3.4 MB/s, eta 10 s``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

LOG_EVERY_S = 30.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _scaled(value: float, unit: str) -> str:
    """``value`` with an SI prefix, as tqdm's ``unit_scale``: 950 B, 1.5 kB, 12.3 MB."""
    for prefix in ("", "k", "M", "G"):
        text = f"{value:.1f}" if prefix else f"{value:.0f}"
        if float(text) < 1000:  # checked after rounding: 999.96 kB reads 1.0 MB, not 1000.0 kB
            return f"{text} {prefix}{unit}"
        value /= 1000
    return f"{value:.1f} T{unit}"


class Progress:
    """Counts work done; shows it as a bar on a terminal and as log lines elsewhere (see the module docstring).

    Iterate over it to count one unit per item, or call ``update``. ``write``
    prints a message without breaking the bar; it prints even when progress
    display is disabled, so errors and warnings are never lost.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, initial: int = 0, stream: IO[str] | None = None,
                 log_every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic, leave: bool = True,
                 unit_scale: bool = False):
        """``leave=False``: the bar disappears when closed (a sub-task's bar under the main one).
        ``unit_scale``: counts and rates with SI prefixes (bytes: kB, MB, GB)."""
        self.iterable = iterable
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.initial = total, initial, initial
        self.desc, self.unit, self.unit_scale = desc, unit, unit_scale
        self.postfix: dict[str, Any] = {}
        self.stream = stream if stream is not None else sys.stderr
        self.log_every_s, self.clock = log_every_s, clock
        self.started = self.last_line = clock()
        self.closed = False
        is_terminal = getattr(self.stream, "isatty", lambda: False)()
        self.logging = enabled and not is_terminal
        self.bar = None
        if enabled and is_terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                            leave=leave, unit_scale=unit_scale)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self.close(stopped=exc_type is not None)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this Progress counts with update(); it was given nothing to iterate over")
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1, message: str | None = None) -> None:
        """Count ``n`` more units. ``message``: these units' own log line (not shown on a bar), logged now with
        the rate and eta appended, in place of the periodic count line."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.logging and message is not None:
            print(", ".join([message, *self._pace(final=False)]), file=self.stream, flush=True)
            self.last_line = self.clock()
        elif self.logging and self.clock() - self.last_line >= self.log_every_s:
            self._log(final=False)

    def set_postfix(self, **values: Any) -> None:
        """Extra counters shown after the rate (e.g. ``not_well_formed=3``)."""
        self.postfix.update(values)
        if self.bar is not None:
            self.bar.set_postfix(self.postfix, refresh=False)

    def write(self, message: str, file: IO[str] | None = None) -> None:
        """Print ``message`` to ``file`` (default: the progress stream) without breaking the bar."""
        file = file if file is not None else self.stream
        if self.bar is not None:
            self.bar.write(message, file=file)
        else:
            print(message, file=file, flush=True)

    def close(self, stopped: bool = False, message: str | None = None) -> None:
        """End the bar, or log the last line (``stopped``: the work ended early, by an error or an interrupt).
        ``message``: the last log line in place of the count (the outcome of the work, e.g. a validation's scores)."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.logging and message is not None:
            print(message, file=self.stream, flush=True)
        elif self.logging:
            self._log(final=True, stopped=stopped)

    def line(self, final: bool = False, stopped: bool = False) -> str:
        """The log line for the current count."""
        if self.unit_scale:
            count = "/".join(_scaled(value, self.unit) for value in (self.n, self.total) if value is not None)
        else:
            count = f"{self.n}/{self.total} {self.unit}s" if self.total is not None else f"{self.n} {self.unit}s"
        parts = [count + (f" ({100 * self.n / self.total:.1f}%)" if self.total else "")]
        parts += self._pace(final, stopped)
        parts += [f"{name}={value}" for name, value in self.postfix.items()]
        return f"{self.desc}: " + ", ".join(parts)

    def _pace(self, final: bool, stopped: bool = False) -> list[str]:
        """The rate of this run's work, then the eta (or, at the end, the time it took)."""
        elapsed = max(self.clock() - self.started, 0.0)
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = []
        if rate > 0 and self.unit_scale:
            parts.append(f"{_scaled(rate, self.unit)}/s")
        elif rate > 0:
            parts.append(f"{rate:.1f}/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}")
        if final:
            parts.append(f"{'stopped after' if stopped else 'finished in'} {_duration(elapsed)}")
        elif rate > 0 and self.total is not None:
            parts.append(f"eta {_duration((self.total - self.n) / rate)}")
        return parts

    def _log(self, final: bool, stopped: bool = False) -> None:
        print(self.line(final, stopped), file=self.stream, flush=True)
        self.last_line = self.clock()


def progress(iterable: Iterable[Any] | None = None, **options: Any) -> Progress:
    """``Progress(iterable, total=…, desc=…, unit=…, enabled=…)``: a bar on a terminal, log lines elsewhere."""
    return Progress(iterable, **options)


def quiet_library_bars() -> None:
    """Turn off the bars that Hugging Face libraries draw themselves (transformers' "Loading weights"), for
    ``--no-progress``: set before they are imported, else switched off in the imported modules."""
    import os

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
