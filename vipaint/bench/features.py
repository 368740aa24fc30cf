"""Inception features per image, and their cache in per-(method, dataset index) files.

One code path for every consumer of FID features (the benchmark report, the paired FID bootstrap, and
later a `vipaint predict` run that saves features beside its per-index results), independent of any
folder layout:

- `image_features(net, images)`: [N, C, H, W] images in [−1, 1] → [N, d] features, in chunks.
- `CachedFeatures(net)`: wraps the network with an in-memory cache keyed by the bytes of each image
  (`image_key`), so an image shared by several computations (a ground truth every method's FID uses)
  goes through the network once, in the batch where it first appeared.
- `feature_path(result_dir, index)`: `<result_dir>/features/<index:06d>.pt`, next to
  `<result_dir>/samples/<index:06d>.npz` and `<result_dir>/metrics/<index:06d>.json`. A file holds the
  features of one observation's images (its ground truth and composites) with their keys and the
  network's label; `CachedFeatures.load` adds them to the cache and `CachedFeatures.save` writes them.
  Since the keys are the image bytes, an entry for a regenerated image is simply not used.
- `extract_observation_features`: what `vipaint predict` (the `PredictionWriter`) calls as each index is
  written: the features of one observation (ground truth, composites, and raw samples where they differ)
  in one network call per observation, so a feature never depends on which other images shared its batch,
  rank or run (1 vs N devices and a resumed run give the same features), then saved to its file.
- `feature_network()`: the cached FID network both consumers use (`vipaint.metrics.default_inception`).
- `distribution_metrics(real, fake, features)`: FID and KID of two image sets through the cached network;
  the benchmark table and the predict report both call it, so the same problems give the same numbers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from vipaint.metrics.distribution import to_unit_rgb

__all__ = ["CachedFeatures", "distribution_metrics", "extract_observation_features", "feature_network",
           "feature_path", "image_features", "image_key", "load_saved_features", "observation_images",
           "observation_keys", "save_observation_features"]


def image_key(image: Tensor) -> str:
    """Cache key of one image as the feature network sees it: SHA-1 of its float32 bytes."""
    return hashlib.sha1(image.detach().float().cpu().numpy().tobytes()).hexdigest()


def observation_images(image: Tensor, composite: Tensor, samples: Tensor | None = None) -> Tensor:
    """[1 + S (+ S), C, H, W]: an observation's ground truth [C, H, W], its composites [S, C, H, W] and,
    when given and not equal to the composites (inpainting), its raw samples [S, C, H, W]."""
    parts = [image[None], composite]
    if samples is not None and not torch.equal(samples, composite):
        parts.append(samples)
    return torch.cat(parts)


def observation_keys(image: Tensor, composite: Tensor, samples: Tensor | None = None) -> list[str]:
    """Keys of an observation's images (`observation_images`, all in [−1, 1]), as `CachedFeatures`
    computes them on the [0, 1] RGB images the network receives."""
    return [image_key(u) for u in to_unit_rgb(observation_images(image, composite, samples))]


def feature_path(result_dir: Path, index: int) -> Path:
    """The feature file of dataset index `index` beside the per-index results in `result_dir`."""
    return Path(result_dir) / "features" / f"{index:06d}.pt"


def image_features(net: nn.Module, images: Tensor, chunk: int = 64, desc: str | None = None) -> Tensor:
    """Features of [N, 1|3, H, W] images in [−1, 1]: mapped to [0, 1] RGB (`to_unit_rgb`), then `net`
    on chunks of `chunk` images, without gradients; `desc` shows a progress bar."""
    starts = range(0, len(images), chunk)
    if desc is not None:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"features {desc}")
    with torch.no_grad():
        return torch.cat([net(to_unit_rgb(images[i:i + chunk])) for i in starts])


class CachedFeatures(nn.Module):
    """A feature network with a per-image cache keyed by `image_key`.

    Args:
        net: maps [N, 3, H, W] images in [0, 1] to [N, d] features.
        label: names the network; files saved under another label are not loaded
            (default: ``net.label``, else the class name).

    Attributes:
        cache: key → [d] feature (on the CPU, whatever device the network runs on).
        num_features, label: as torchmetrics' ``feature=`` route reads them.
    """

    def __init__(self, net: nn.Module, label: str | None = None) -> None:
        super().__init__()
        self.net, self.cache = net, {}
        self.num_features = getattr(net, "num_features", 2048)
        self.label = label if label is not None else getattr(net, "label", type(net).__name__)
        self.on_disk: dict[Path, tuple[str, ...]] = {}

    def forward(self, x: Tensor) -> Tensor:
        """Features of [N, 3, H, W] images in [0, 1]; only images missing from the cache reach `net`."""
        keys = [image_key(row) for row in x]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            feats = self.net(x[[first[k] for k in todo]])
            self.cache.update(zip(todo, feats.detach().cpu(), strict=True))
        return torch.stack([self.cache[k] for k in keys]).to(x.device)

    def load(self, path: Path) -> None:
        """Add the features saved at `path` (nothing if it is missing or from another network)."""
        path = Path(path)
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("label") == self.label:
                self.cache.update(zip(saved["keys"], saved["features"], strict=True))
                self.on_disk[path] = tuple(saved["keys"])

    def save(self, path: Path, keys: Sequence[str]) -> bool:
        """Write the features of `keys` to `path` if all are cached and the file does not hold all of
        them already (a file that also holds the raw samples' features is kept); returns whether it wrote."""
        path, keys = Path(path), tuple(keys)
        if not keys or set(keys) <= set(self.on_disk.get(path, ())) or any(k not in self.cache for k in keys):
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"label": self.label, "keys": list(keys),
                    "features": torch.stack([self.cache[k] for k in keys]).cpu()}, tmp)
        os.replace(tmp, path)
        self.on_disk[path] = keys
        return True


def load_saved_features(cached: CachedFeatures, result_dir: Path) -> None:
    """Add every feature file of `result_dir` (`<result_dir>/features/*.pt`) to the cache."""
    for path in sorted((Path(result_dir) / "features").glob("*.pt")):
        cached.load(path)


def save_observation_features(cached: CachedFeatures, result_dir: Path, index: int, image: Tensor,
                              composite: Tensor, samples: Tensor | None = None) -> bool:
    """Save the cached features of one observation (ground truth [C, H, W], composites [S, C, H, W] and
    optionally raw samples [S, C, H, W], in [−1, 1]) to `feature_path(result_dir, index)`; returns whether
    it wrote (not when some are missing)."""
    return cached.save(feature_path(result_dir, index), observation_keys(image, composite, samples))


def extract_observation_features(cached: CachedFeatures, result_dir: Path, index: int, image: Tensor,
                                 composite: Tensor, samples: Tensor | None = None) -> bool:
    """Features of one observation's images (`observation_images`) in one call of the network (on the
    device of its parameters; cached images are not recomputed), saved to `feature_path(result_dir,
    index)`; returns whether the file was written."""
    param = next(cached.net.parameters(), None)
    images = observation_images(image, composite, samples)
    image_features(cached, images if param is None else images.to(param.device), chunk=len(images))
    return save_observation_features(cached, result_dir, index, image, composite, samples)


def feature_network(fid: bool = True, device: torch.device | str = "cpu") -> tuple[CachedFeatures | None, str]:
    """The cached FID feature network (`vipaint.metrics.default_inception`, looked up at call time) on
    `device`, and its label; None with the reason when FID/KID are off or no network is available locally,
    None with torchmetrics' built-in Inception's label when only that one is (it takes no cache, so FID/KID
    are not computed with it)."""
    import vipaint.metrics

    if not fid:
        return None, "FID/KID skipped"
    try:
        net, label = vipaint.metrics.default_inception()
    except FileNotFoundError as err:
        return None, f"FID/KID skipped: {err}"
    if not isinstance(net, nn.Module):
        return None, label
    return CachedFeatures(net.to(device)), label


def distribution_metrics(real: Tensor, fake: Tensor, features: nn.Module | None, chunk: int = 64) -> dict:
    """FID (float64) and KID of generated images `fake` [M, C, H, W] against `real` [N, C, H, W] (both in
    [−1, 1]), fed to the metrics in chunks of `chunk` in the given order; {} without a network, only the
    counts when N < 2 (a covariance needs two images: FID/KID are left out, not faked)."""
    from vipaint.metrics import make_fid, make_kid

    if features is None or not len(real):
        return {}
    if len(real) < 2:
        return {"n_fake": len(fake), "n_real": len(real)}
    fid, kid = make_fid(features), make_kid(features, subset_size=1000)
    for metric in (fid, kid):
        for i in range(0, len(real), chunk):
            metric.update(real[i:i + chunk], real=True)
        for i in range(0, len(fake), chunk):
            metric.update(fake[i:i + chunk], real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset": kid.subset_size_used, "n_fake": len(fake), "n_real": len(real)}
