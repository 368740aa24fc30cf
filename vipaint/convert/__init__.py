"""Converters from original checkpoints to the diffusers-style folders `vipaint` loads.

`vipaint convert-ldm CKPT --config NAME|PATH.yaml --out DIR` (`vipaint.convert.ldm.main`) converts CompVis
latent-diffusion checkpoints; see docs/convert.md. Names are imported lazily (no torch/diffusers import here).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["main", "convert_ldm", "apply_attention_heads", "make_synthetic_ckpt", "load_state_dict",
           "CheckpointLoadError", "ConversionError"]

_WHERE = {"main": "vipaint.convert.ldm", "convert_ldm": "vipaint.convert.ldm",
          "apply_attention_heads": "vipaint.priors.loading", "ConversionError": "vipaint.convert.ldm",
          "make_synthetic_ckpt": "vipaint.convert.synthetic", "load_state_dict": "vipaint.convert.io",
          "CheckpointLoadError": "vipaint.convert.io"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'vipaint.convert' has no attribute {name!r}")
