"""``--dump-inputs DIR``: what the model is fed, request by request, to check a setup before a long run.

Per request, ``DIR/<name>.npz`` holds ``input_ids`` (1-D int64, padding
removed) and every vision tensor under the name the model's forward takes it
(``pixel_values``, ``pixel_values_videos``, ``image_grid_thw``,
``video_grid_thw``), that request's share of the batch, as fed (a bfloat16 or
float16 tensor is stored as the float32 of the same values); other per-token
inputs (``mm_token_type_ids``) lose their padding like ``input_ids``.
``DIR/<name>.txt`` is the decoded text, special tokens included. Step 1 names a
request ``<key>_<centre>``; other requests are named by their key.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from vera.errors import VeraError
from vera.io import save_npz_atomic, write_text_atomic
from vera.vlm.backends.base import VLMRequest

# Vision tensors and the grids that give their rows per item (InternVL's pixel_values have none: a row a tile).
_VISION = {
    "pixel_values": "image_grid_thw",
    "pixel_values_videos": "video_grid_thw",
}
_GRIDS = {"image_grid_thw": "images", "video_grid_thw": "videos"}  # grid → what its rows count


def dump_name(request: VLMRequest) -> str:
    """A file name for the request: its ``dump_name`` or key, with anything but ``[\\w.-]`` made ``_``."""
    name = re.sub(r"[^\w.-]+", "_", request.dump_name or request.key).strip("_")
    if not name:
        raise VeraError("a request without a key or dump name cannot be dumped")
    return name


def _items(request: VLMRequest, kind: str) -> int:
    """How many images or videos the request contributes to the batch."""
    if kind == "videos":
        return 1 if request.video and request.images else 0  # a video request without frames is text only
    return 0 if request.video else len(request.images)


def _split_rows(value: torch.Tensor, counts: list[int], name: str) -> list[torch.Tensor]:
    if sum(counts) != value.shape[0]:
        raise VeraError(f"--dump-inputs: {name} has {value.shape[0]} rows for {sum(counts)} expected")
    return list(torch.split(value, counts))


def split_inputs(requests: list[VLMRequest], inputs: dict) -> list[dict[str, np.ndarray]]:
    """Each request's share of a batch's model inputs, as numpy arrays."""
    mask = inputs["attention_mask"].bool().cpu()
    batch, length = mask.shape
    shares: list[dict[str, np.ndarray]] = [{} for _ in requests]
    for name, value in inputs.items():
        if name == "attention_mask" or not isinstance(value, torch.Tensor):
            continue
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # bfloat16/float16 → float32 is exact
        if value.dim() >= 2 and tuple(value.shape[:2]) == (batch, length):  # per token: drop the padding
            rows = [value[row][mask[row]] for row in range(batch)]
        elif name in _GRIDS:
            rows = _split_rows(value, [_items(request, _GRIDS[name]) for request in requests], name)
        elif name in _VISION:
            grid = inputs.get(_VISION[name])
            if grid is not None:  # flattened patches: each item holds t·h·w rows
                per_item = [int(cells) for cells in grid.cpu().prod(dim=1)]
                kind, counts, start = _GRIDS[_VISION[name]], [], 0
                for request in requests:
                    items = _items(request, kind)
                    counts.append(sum(per_item[start:start + items]))
                    start += items
            else:  # one image (tile) per row
                counts = [_items(request, "images") for request in requests]
            rows = _split_rows(value, counts, name)
        else:
            raise VeraError(f"--dump-inputs cannot tell which request each row of the model input {name!r} "
                            "belongs to")
        for share, row in zip(shares, rows, strict=True):
            share[name] = row.numpy()
    for share in shares:
        share["input_ids"] = share["input_ids"].astype(np.int64)
    return shares


def write_input_dumps(directory: Path, requests: list[VLMRequest], inputs: dict, tokenizer) -> None:
    """``<name>.npz`` and ``<name>.txt`` for every request of the batch."""
    directory = Path(directory)
    for request, share in zip(requests, split_inputs(requests, inputs), strict=True):
        name = dump_name(request)
        save_npz_atomic(directory / f"{name}.npz", share)
        write_text_atomic(directory / f"{name}.txt",
                          tokenizer.decode(share["input_ids"].tolist(), skip_special_tokens=False))


def enable_input_dumps(backend, directory: Path) -> None:
    """Make ``backend`` dump the inputs of every request to ``directory``, or say it cannot."""
    if not hasattr(backend, "dump_inputs"):
        raise VeraError(f"backend {getattr(backend, 'name', type(backend).__name__)} cannot dump its inputs "
                        "(--dump-inputs needs the hf backend)")
    Path(directory).mkdir(parents=True, exist_ok=True)
    backend.dump_inputs = Path(directory)
