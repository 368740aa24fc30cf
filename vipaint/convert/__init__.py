"""Converters from original checkpoints to the diffusers-style folders `vipaint` loads.

`vipaint convert-ldm CKPT --config NAME|PATH.yaml --out DIR` (`vipaint.convert.ldm.main`) converts CompVis
latent-diffusion checkpoints; see docs/convert.md. Names are imported lazily (no torch/diffusers import here).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["main", "convert_ldm", "apply_attention_heads", "make_synthetic_ckpt", "load_state_dict",
           "CheckpointLoadError", "ConversionError"]

_WHERE = {"main": "ldm", "convert_ldm": "ldm", "apply_attention_heads": "ldm", "ConversionError": "ldm",
          "make_synthetic_ckpt": "synthetic", "load_state_dict": "io", "CheckpointLoadError": "io"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"vipaint.convert.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'vipaint.convert' has no attribute {name!r}")
