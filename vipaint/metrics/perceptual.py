"""Perceptual distances that are only built from local weights, never from a random backbone.

Standard LPIPS (torchmetrics, v0.1 heads shipped in the wheel) needs the torchvision backbone file in
``$TORCH_HOME/hub/checkpoints``; without it no LPIPS is computed and the caller gets the reason instead
(ECOSYSTEM.md §3.2, ASSETS.md §4). ST-LPIPS is used only when its package is importable, and is always
labelled as not comparable to LPIPS.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vipaint.metrics.features import hub_checkpoint

__all__ = ["LPIPS_BACKBONE_FILES", "LPIPS_MIN_SIZE", "PerceptualDistance", "perceptual_metric"]

LPIPS_BACKBONE_FILES: dict[str, str] = {
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
}
_KINDS = ("auto", "lpips", "vgg", "alex", "stlpips", "stlpips-alex", "stlpips-vgg", "none")


class PerceptualDistance(nn.Module):
    """Frozen perceptual network as a per-image distance on [−1, 1] images.

    Args:
        net: module called as ``net(a, b)`` on [N, 3, H, W] images in [−1, 1], returning N values
            (any shape that flattens to [N], e.g. [N, 1, 1, 1]).
        label: what the distance is, for reports.
        min_size: images whose height or width is below it are first resized (bilinear) so that the
            smaller side is `min_size` (LPIPS's AlexNet has no spatial extent left at 28 px, VGG at
            16 px); 0 = never. Larger images are passed unchanged.
    """

    def __init__(self, net: nn.Module, label: str, min_size: int = 0) -> None:
        super().__init__()
        self.net = net.eval()
        for param in self.net.parameters():
            param.requires_grad_(False)
        self.label, self.min_size = label, min_size

    def train(self, mode: bool = True) -> PerceptualDistance:
        """Keep the network in eval mode (it is a fixed metric)."""
        super().train(False)
        return self

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distance per image (differentiable with respect to the inputs).

        Args:
            a: [N, 1|3, H, W] images in [−1, 1]; one channel is repeated to three.
            b: [N, 1|3, H, W] images in [−1, 1].

        Returns:
            [N] distances.
        """
        a, b = (_upsample(_rgb(t.float().clamp(-1.0, 1.0)), self.min_size) for t in (a, b))
        return self.net(a, b).reshape(a.shape[0], -1).mean(1)


def _rgb(x: Tensor) -> Tensor:
    """Repeat a one-channel batch to three channels."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _upsample(x: Tensor, min_size: int) -> Tensor:
    """Bilinear resize of a batch whose smaller side is below `min_size`, to smaller side `min_size`."""
    h, w = x.shape[-2:]
    if min(h, w) >= min_size:
        return x
    scale = min_size / min(h, w)
    size = (max(min_size, round(h * scale)), max(min_size, round(w * scale)))
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(-1.0, 1.0)


LPIPS_MIN_SIZE = 32     # smaller images are upsampled for LPIPS (see `PerceptualDistance`)


def _lpips(net_type: str) -> PerceptualDistance:
    """Standard LPIPS through torchmetrics (backbone from the local torch hub cache)."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type=net_type, reduction="none")  # type: ignore[arg-type]
    return PerceptualDistance(metric.net, f"LPIPS ({net_type}, torchmetrics v0.1; images under "
                              f"{LPIPS_MIN_SIZE} px upsampled bilinearly to {LPIPS_MIN_SIZE})", LPIPS_MIN_SIZE)


def _stlpips(net_type: str) -> tuple[PerceptualDistance | None, str]:
    """Shift-tolerant LPIPS from the bundled weights of `stlpips_pytorch` (not comparable to LPIPS).

    Returns (None, reason) when the package cannot be imported (it is optional and not installed by default).
    """
    try:
        from stlpips_pytorch import stlpips  # type: ignore[import-not-found]
    except ImportError as err:
        return None, f"ST-LPIPS skipped: stlpips_pytorch not importable ({err}); pip install stlpips-pytorch"
    net = stlpips.LPIPS(net=net_type, variant="shift_tolerant")
    dist = PerceptualDistance(net, f"ST-LPIPS (not comparable to LPIPS; {net_type}; images under {LPIPS_MIN_SIZE} px "
                              f"upsampled bilinearly to {LPIPS_MIN_SIZE})", LPIPS_MIN_SIZE)
    return dist, dist.label


def _missing_reason(nets: tuple[str, ...]) -> str:
    files = " / ".join(LPIPS_BACKBONE_FILES[n] for n in nets)
    folder = hub_checkpoint("").resolve()
    return f"LPIPS skipped: backbone weights {files} not found in {folder}; put the file there to enable"


def perceptual_metric(
    kind: str = "auto", device: torch.device | str = "cpu"
) -> tuple[PerceptualDistance | None, str]:
    """Build a perceptual distance from local weights only.

    Args:
        kind: ``"vgg"`` / ``"alex"``: standard LPIPS with that backbone; ``"lpips"``: VGG, else Alex
            (whichever backbone file exists); ``"stlpips"`` (alex) / ``"stlpips-alex"`` /
            ``"stlpips-vgg"``: shift-tolerant LPIPS if `stlpips_pytorch` is importable; ``"auto"``:
            LPIPS if possible, else ST-LPIPS, else None; ``"none"``: None.
        device: where the network is placed.

    Returns:
        (distance or None, label). The distance maps two [N, C, H, W] batches in [−1, 1] to [N]; when it
        is None the label gives the reason (e.g. which backbone file to put where).
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown perceptual metric {kind!r}; expected one of {_KINDS}")
    if kind == "none":
        return None, "perceptual metric disabled"
    if kind.startswith("stlpips"):
        dist, label = _stlpips("vgg" if kind == "stlpips-vgg" else "alex")
        return (dist.to(device) if dist is not None else None), label
    nets = ("vgg", "alex") if kind in ("auto", "lpips") else (kind,)
    for net in nets:
        if hub_checkpoint(LPIPS_BACKBONE_FILES[net]).is_file():
            dist = _lpips(net).to(device)
            return dist, dist.label
    reason = _missing_reason(nets)
    if kind == "auto":
        dist, label = _stlpips("alex")
        if dist is not None:
            return dist.to(device), f"{label} [{reason}]"
    return None, reason
