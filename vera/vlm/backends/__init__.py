"""VLM backends: a batch of prompts with frames in, answers out.

``load_backend`` builds one by name; tests use ``vera.vlm.backends.scripted.ScriptedBackend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vera.vlm.backends.base import VLMBackend
from vera.errors import VeraError
from vera.constants import BACKENDS
from vera.vlm.backends.openai import OpenAIBackend, ServerSettings


def server_settings(backend: str, *, base_urls: tuple[str, ...] | None, concurrency: int, timeout: float, retries: int,
                    image_format: str) -> ServerSettings | None:
    """The openai backend's settings (None for the other backends, which ignore them)."""
    if backend != "openai":
        return None
    return ServerSettings(base_urls=base_urls, concurrency=concurrency, timeout=timeout, retries=retries,
                          image_format=image_format)


def load_backend(name: str, model: str, *, device: str = "auto", dtype: str = "auto",
                 max_batch_size: int | None = None, local_files_only: bool = False,
                 server: ServerSettings | None = None, static_cache: bool = False,
                 compile: bool = False, decoder: str = "auto") -> VLMBackend:
    """A backend by name: ``hf`` (transformers image-text-to-text models, ``model`` a folder or Hub id) or
    ``openai`` (OpenAI-compatible servers given by ``server``, ``model`` the served name).

    Where ``model`` is a Hub id that cannot be had (network off or the Hub out
    of reach, and not in the local cache), ``hf`` fails within seconds, before
    transformers is imported.
    """
    if name == "openai":
        if server is None:
            raise VeraError("the openai backend needs --base-url")
        return OpenAIBackend(model, server)
    if name == "hf":
        from vera.vlm.backends.hub import locate_model

        model, local_files_only = locate_model(model, local_files_only)
        from vera.vlm.backends.hf import HFBackend  # imports transformers: only when asked for

        return HFBackend(model, device=device, dtype=dtype, max_batch_size=max_batch_size,
                         local_files_only=local_files_only, static_cache=static_cache, compile=compile, decoder=decoder)
    raise VeraError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def model_type_of(model: str, *, local_files_only: bool = False) -> str:
    """The checkpoint's ``model_type`` from its ``config.json`` alone (no weights, no transformers), e.g. ``qwen2_vl``."""
    from vera.io import read_json

    config = Path(model) / "config.json"
    if not config.is_file():  # a Hub id: its config in the local cache, where locate_model found it
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model), "config.json")
        if not isinstance(cached, str):
            raise VeraError(f"cannot read the config of model {model}: no config.json in the folder or the cache")
        config = Path(cached)
    content = read_json(config, "model config")
    if not isinstance(content, dict) or not isinstance(content.get("model_type"), str):
        raise VeraError(f"model config {config} has no model_type")
    return content["model_type"]


@dataclass(frozen=True)
class ModelChoice:
    """The model a command runs: what to load (or the served name), and how."""

    name: str
    local_files_only: bool
    served: bool

    def model_type(self) -> str | None:
        """Its ``model_type`` from config.json; None for a served model, whose architecture is not known here."""
        return None if self.served else model_type_of(self.name, local_files_only=self.local_files_only)


def choose_model(backend: str, model: str | None, served_model: str | None) -> ModelChoice:
    """The model of a Step 1 or training run (``served_model`` for a server backend), checked within seconds:
    a Hub id that cannot be had fails here, before any folder is made or process started."""
    if backend != "hf":
        return ModelChoice(served_model, False, served=True)
    from vera.vlm.backends.hub import locate_model

    return ModelChoice(*locate_model(model), served=False)
