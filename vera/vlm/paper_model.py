"""The paper's backbone, InternVL2-8B, ready for the ``hf`` backend: downloaded and converted once, then cached.

The published checkpoint (``OpenGVLab/InternVL2-8B``) runs only through
remote code that current transformers no longer run, so it is converted once
(``vera.vlm.convert_internvl2``) into ``<cache>/InternVL2-8B-native``, where
``<cache>`` is ``$VERA_CACHE`` or ``~/.cache/vera`` (``$XDG_CACHE_HOME/vera``).
The original files come from the Hugging Face cache where they already are,
else from the Hub; with the network off (``HF_HUB_OFFLINE=1``, or no answer
from the Hub) the command stops at once, saying what it would fetch and where.
Only ``huggingface_hub`` is imported until the conversion itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from huggingface_hub import constants

from vera.errors import VeraError
from vera.io import read_json
from vera.vlm.backends.hub import REACH_TIMEOUT_SECONDS, hub_reachable, offline_reason

PAPER_MODEL = "OpenGVLab/InternVL2-8B"
CONVERTED_NAME = "InternVL2-8B-native"
CONVERSION_RECORD = "vera_conversion.json"  # written last by the conversion: its presence means complete
# What the conversion reads (vera.vlm.convert_internvl2): no remote code, no other files.
SOURCE_FILES = ("config.json", "model.safetensors.index.json", "*.safetensors", "tokenizer.model",
                "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
DOWNLOAD_SIZE = "about 16 GB"  # 8.1 billion bfloat16 parameters in 4 safetensors shards


def cache_root() -> Path:
    """Where converted models are kept: ``$VERA_CACHE``, else ``$XDG_CACHE_HOME/vera``, else ``~/.cache/vera``."""
    if os.environ.get("VERA_CACHE"):
        return Path(os.environ["VERA_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vera"


def converted_path() -> Path:
    return cache_root() / CONVERTED_NAME


def what_is_fetched() -> str:
    return (f"{PAPER_MODEL} from the Hugging Face Hub (config.json, tokenizer.model, tokenizer_config.json and the "
            f"*.safetensors shards, {DOWNLOAD_SIZE}) into {constants.HF_HUB_CACHE}, converted once into "
            f"{converted_path()}")


def _complete(folder: Path) -> bool:
    """Whether a snapshot holds the config, the tokenizer and every shard its index names."""
    index = folder / "model.safetensors.index.json"
    needed = [folder / name for name in ("config.json", "tokenizer.model", "tokenizer_config.json")]
    if not index.is_file() or not all(path.is_file() for path in needed):
        return False
    shards = set(read_json(index, "safetensors index").get("weight_map", {}).values())
    return bool(shards) and all((folder / shard).is_file() for shard in shards)


def cached_source() -> Path | None:
    """The original checkpoint's complete snapshot in the Hugging Face cache, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(PAPER_MODEL, allow_patterns=list(SOURCE_FILES), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if _complete(folder) else None


def paper_model(log: Callable[[str], None] = print) -> str:
    """The converted InternVL2-8B folder, downloading and converting it first where needed (see the docstring)."""
    target = converted_path()
    if (target / CONVERSION_RECORD).is_file():
        return str(target)
    source = cached_source()
    if source is None:
        off = offline_reason()
        if off is None and not hub_reachable():
            off = f"the Hub at {constants.ENDPOINT} does not answer within {REACH_TIMEOUT_SECONDS:g} s"
        if off is not None:
            raise VeraError(f"without --model, detect.py runs the paper's InternVL2-8B and would download "
                            f"{what_is_fetched()}; the network is off ({off}): download it where there is one "
                            f"(huggingface-cli download {PAPER_MODEL}) into that cache, or pass --model PATH_OR_ID")
        from huggingface_hub import snapshot_download

        log(f"downloading {what_is_fetched()}")
        source = Path(snapshot_download(PAPER_MODEL, allow_patterns=list(SOURCE_FILES)))
        if not _complete(source):
            raise VeraError(f"the download of {PAPER_MODEL} into {source} is incomplete; run the command again")
    log(f"converting {source} into {target} (once; this takes a few minutes)")
    from vera.vlm.convert_internvl2 import convert

    convert(source, target, overwrite=True)
    return str(target)
