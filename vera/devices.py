"""Devices and precisions named on the command line (``--device``, ``--dtype``)."""

from __future__ import annotations

import torch

from vera.errors import VeraError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` (or None) is the first GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise VeraError(f"unknown device {device!r} (try cpu, cuda or cuda:1)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise VeraError(f"device {device} asked for, but torch sees no GPU")
    return resolved


def resolve_dtype(dtype: str, device: torch.device, gpu_default: str = "bfloat16") -> torch.dtype:
    """``auto`` is ``gpu_default`` on a GPU and float32 on the CPU."""
    if dtype == "auto":
        return DTYPES[gpu_default] if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise VeraError(f"unknown dtype {dtype!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]
