"""Reading CompVis checkpoints without executing pickled code.

`.ckpt`/`.pt`/`.pth` files go through `torch.load(..., weights_only=True)`: PyTorch's restricted
unpickler rebuilds tensors and plain containers and refuses every other global. Old PyTorch-Lightning
checkpoints often carry non-tensor objects beside `state_dict` (callback states keyed by the callback
*class*, hyper-parameter objects, numpy scalars), which that unpickler rejects. We then raise
`CheckpointLoadError` with the offending global and the safe ways out; with `stub_unknown_globals=True`
each rejected global is replaced by an inert placeholder class (nothing is imported from, or executed
for, the named module) and loading is retried, still under `weights_only=True`.
`.safetensors` files are read with safetensors (no pickle at all).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["CheckpointLoadError", "load_state_dict", "split_prefix"]

_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
_MAX_STUBS = 64


class CheckpointLoadError(RuntimeError):
    """A checkpoint could not be read safely."""


class _Inert:
    """Placeholder for a global a checkpoint names but that we refuse to import: accepts and drops state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _message(path: Path, err: Exception) -> str:
    m = _GLOBAL.search(str(err))
    what = f"the non-tensor object `{m.group(1)}`" if m else "an object PyTorch's safe unpickler refuses"
    return (f"{path}: refusing to unpickle {what}. The checkpoint is read with "
            f"torch.load(weights_only=True) so that no code stored in it can run; old PyTorch-Lightning "
            f"checkpoints keep callback/hyper-parameter objects next to `state_dict` and trip this.\n"
            f"  * retry with --stub-unknown-globals: unknown globals become inert placeholders "
            f"(still weights_only, nothing is imported or executed), the tensors are kept;\n"
            f"  * or, on a machine where you trust the file, re-save only the weights: "
            f"python -c \"import torch; from safetensors.torch import save_file; "
            f"sd = torch.load('model.ckpt', map_location='cpu', weights_only=False)['state_dict']; "
            f"save_file({{k: v.contiguous() for k, v in sd.items() if hasattr(v, 'contiguous')}}, "
            f"'model.safetensors')\" and convert the .safetensors file.")


def _torch_load(path: Path, stub_unknown_globals: bool) -> Any:
    stubs: list[tuple[type, str]] = []
    while True:
        try:
            with torch.serialization.safe_globals(stubs):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            m = _GLOBAL.search(str(err))
            name = m.group(1) if m else None
            if not stub_unknown_globals or name is None or len(stubs) >= _MAX_STUBS or name.startswith("torch."):
                raise CheckpointLoadError(_message(path, err)) from err
            full = name if "." in name else f"builtins.{name}"
            if any(s[1] == full for s in stubs):  # stubbing did not help (e.g. a stub object is called)
                raise CheckpointLoadError(_message(path, err)) from err
            stubs.append((type(full.rsplit(".", 1)[-1], (_Inert,), {"__module__": "vipaint.convert.io"}), full))


def load_state_dict(path: str | Path, *, stub_unknown_globals: bool = False) -> dict[str, Tensor]:
    """The flat tensor dict of a checkpoint (`ckpt["state_dict"]` when present)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path), device="cpu"))
    obj = _torch_load(path, stub_unknown_globals)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointLoadError(f"{path}: expected a dict of tensors (or {{'state_dict': ...}}), "
                                  f"got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def split_prefix(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of `sd` under `prefix`, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}
