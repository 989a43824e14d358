"""Where a model comes from: a local folder, the Hugging Face cache, or the Hub, decided within seconds.

Given a Hub id while offline, transformers retries the network for minutes
before it gives up (2.5 minutes measured); here the answer comes at once: a
model that is neither a local folder nor in the local cache, with the network
off or the Hub out of reach, is a one-line error before anything loads. Only
``huggingface_hub`` is imported (no torch, no transformers).
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from vera.errors import VeraError

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
REACH_TIMEOUT_SECONDS = 3.0


def offline_reason() -> str | None:
    """The variable that switches the Hub off (``HF_HUB_OFFLINE=1`` …), or ``None``."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}={os.environ[name]}"
    return None


def in_cache(model_id: str) -> bool:
    """Whether the local Hugging Face cache holds the model's ``config.json`` (every model has one)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def hub_reachable(timeout: float = REACH_TIMEOUT_SECONDS) -> bool:
    """Whether a TCP connection to the Hub endpoint (or the HTTPS proxy for it) opens within ``timeout``."""
    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or "", proxy_url.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def locate_model(model: str, local_files_only: bool = False) -> tuple[str, bool]:
    """``(model, local_files_only)`` to load with, or a ``VeraError`` within seconds saying why it cannot load.

    A local folder loads as it is. A Hub id loads from the cache alone when the
    network is off (``local_files_only``, ``HF_HUB_OFFLINE``,
    ``TRANSFORMERS_OFFLINE``) or the Hub does not answer; otherwise from the Hub.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():  # every model folder has one; transformers would take a Hub id
            raise VeraError(f"model folder {model} has no config.json (is it the folder of a downloaded or "
                            "converted model?)")
        return model, local_files_only
    # Only a Hub id needs huggingface_hub (and its HTTP stack): a local folder imports nothing.
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model)
    except HFValidationError:
        raise VeraError(f"model folder not found: {model}") from None
    off = "local_files_only" if local_files_only else offline_reason()
    if off is None and not hub_reachable():
        off = f"the Hub at {constants.ENDPOINT} does not answer within {REACH_TIMEOUT_SECONDS:g} s"
    if off is None:
        return model, False
    if not in_cache(model):
        raise VeraError(f"model {model} is neither a local folder nor in the Hugging Face cache "
                        f"({constants.HF_HUB_CACHE}), and the network is off ({off})")
    return model, True
