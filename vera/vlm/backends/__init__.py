"""VLM backends: a batch of prompts with frames in, answers out.

``load_backend`` builds one by name; tests use ``vera.vlm.backends.scripted.ScriptedBackend``.
"""

from __future__ import annotations

from vera.vlm.backends.base import VLMBackend
from vera.errors import VeraError
from vera.options import BACKENDS



def load_backend(name: str, model: str, *, device: str = "auto", dtype: str = "auto",
                 max_batch_size: int | None = None, local_files_only: bool = False, static_cache: bool = False,
                 compile: bool = False) -> VLMBackend:
    """A backend by name: ``hf`` (transformers image-text-to-text models)."""
    if name == "hf":
        from vera.vlm.backends.hf import HFBackend  # imports transformers: only when asked for

        return HFBackend(model, device=device, dtype=dtype, max_batch_size=max_batch_size,
                         local_files_only=local_files_only, static_cache=static_cache, compile=compile)
    raise VeraError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
