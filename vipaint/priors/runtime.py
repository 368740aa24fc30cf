"""Run-time options shared by a diffusers prior's denoiser and codec calls: `torch.autocast` (bf16/fp16 on
CUDA, or forced on CPU for tests) and the channels-last memory format of 4-D inputs."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["AUTOCAST_DTYPES", "Runtime", "check_autocast"]

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                   "float16": torch.float16}


def check_autocast(autocast: str | None) -> None:
    """Reject an `autocast` option that names no supported dtype."""
    if autocast is not None and str(autocast).lower() not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be None or one of {sorted(AUTOCAST_DTYPES)}, got {autocast!r}")


@dataclass(frozen=True)
class Runtime:
    """`autocast`: None or a key of `AUTOCAST_DTYPES` (lower case); a no-op on CPU unless `force_autocast`.
    `channels_last`: give 4-D inputs the channels-last memory format."""

    autocast: str | None = None
    force_autocast: bool = False
    channels_last: bool = False

    def amp(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The autocast context for a call on `device` (a null context when autocast is off)."""
        if self.autocast is None or (device.type == "cpu" and not self.force_autocast):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[self.autocast])

    def fmt(self, x: Tensor) -> Tensor:
        """`x` in channels-last memory format when that option is on and `x` is 4-D."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x
