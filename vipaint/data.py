"""Datasets of (image, mask, index) items for inverse problems, behind a LightningDataModule.

Sources: a local image folder (optionally with paired masks, labels and prompts through `metadata.jsonl`
`{"file_name": ..., "mask_file_name": ..., "class_id": ..., "prompt": ..., "negative_prompt": ...}`; see
`vipaint.metadata`), a Hub dataset id through `datasets`, or
samples of an analytic prior ("prior", given by `InverseProblemDataModule.set_prior`). Masks come from the
files or from generators; with G generators the dataset is the product images × generators: item k = image
k mod N, generator k div N. With `start` set (a benchmark split), the images are rows start … start+N−1 and
the dataset index is global, image row i × G + generator g, so an image's index, seeds and results do not
depend on which split holds it. The DataModule yields only the pending indices (`skip_done`); each item keeps
its dataset index, from which every per-image seed derives, so a resumed run computes what a full run does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vipaint.data_sources import DatasetNotFoundError, load_table
from vipaint.imageio import RESIZE_POLICIES, fit_mask, fit_mask_to_image, load_image, read_image
from vipaint.masks import FileMask, MaskGenerator, check_mask
from vipaint.metadata import TEXT_COLUMNS, check_metadata
from vipaint.provenance import sha256_bytes, sha256_file
from vipaint.seeding import derive_seed

if TYPE_CHECKING:
    from vipaint.priors.base import Prior

__all__ = [
    "DatasetNotFoundError",
    "InverseProblemDataModule",
    "InverseProblemDataset",
    "PendingSampler",
    "check_metadata",
    "load_image",
    "read_image",
]


class InverseProblemDataset(Dataset):
    """Items {"image" [C,H,W], "mask" [1,H,W], "index", "image_index", "mask_name", "label", "path", "prompt",
    "negative_prompt"}: the prompts are the row's `prompt` / `negative_prompt` columns where set, else
    `prompt` / `negative_prompt` given here (the run's; default "")."""

    def __init__(self, *, source: str, split: str = "test", masks: list[MaskGenerator] | None = None,
                 num_images: int | None = None, image_size: int | None = None, channels: int | None = None,
                 seed: int = 0, cache_dir: str | None = None, prior_samples: Tensor | None = None,
                 resize: str = "crop", start: int | None = None, prompt: str = "", negative_prompt: str = "") -> None:
        self.source, self.masks, self.seed, self.start = source, list(masks or []), seed, start
        self.text = {"prompt": str(prompt), "negative_prompt": str(negative_prompt)}
        self.image_size, self.channels, self.resize = image_size, channels, resize
        self.prior_samples = prior_samples
        if prior_samples is not None:     # one per image slot (with `start`: rows start, start+1, …)
            self.table = None
            n = prior_samples.shape[0] + (start or 0)
        else:
            self.table = load_table(source, split, cache_dir)
            n = len(self.table)
            if "image" not in self.table.features:
                raise ValueError(f"dataset '{source}' has no 'image' column (columns: {list(self.table.features)})")
            if not self.masks and "mask" not in self.table.features:
                raise ValueError(f"dataset '{source}' has no 'mask' column (metadata.jsonl with mask_file_name); "
                                 f"configure data.masks generators instead")
        self.n_images = min(n - (start or 0), num_images) if num_images is not None else n - (start or 0)
        if self.n_images <= 0:
            raise ValueError(f"dataset '{source}' has no image at or after row {start or 0} (it has {n})")

    def index_of(self, p: int) -> int:
        """The dataset index of position p: p itself, or with `start` the global row × G + mask type."""
        if self.start is None:
            return p
        return (self.start + p % self.n_images) * max(1, len(self.masks)) + p // self.n_images

    def position(self, k: int) -> int:
        """The position of dataset index k (inverse of `index_of`)."""
        if self.start is None:
            return k
        row, g = divmod(k, max(1, len(self.masks)))
        return (row - self.start) + g * self.n_images

    def _row(self, p: int) -> tuple[int, int, int]:
        """(image slot, global image row, mask type) of position p."""
        i, g = p % self.n_images, p // self.n_images
        return i, i + (self.start or 0), g

    def __len__(self) -> int:
        return self.n_images * max(1, len(self.masks))

    def _cell(self, row: dict, col: str) -> tuple[object, str]:
        v = row[col]
        if isinstance(v, dict):
            path = v.get("path") or "<bytes>"
            return (v["path"] if v.get("bytes") is None else __import__("io").BytesIO(v["bytes"])), path
        return v, str(v)

    def describe(self, p: int) -> tuple[str, str]:
        """(image path, mask name) of position p, as `__getitem__` gives them, without decoding the image."""
        _, r, g = self._row(p)
        path = f"prior sample {r}" if self.table is None else self._cell(self.table[r], "image")[1]
        return path, (self.masks[g].name if self.masks else "file")

    def fingerprint(self, p: int) -> dict[str, str]:
        """Content hashes of position p's input files, {"image_sha256": ..., "mask_sha256": ...} (a generated
        mask has none: the settings and the index determine it; a prior sample hashes its tensor), and its
        prompts where set ({"prompt": ..., "negative_prompt": ...}, non-empty ones only)."""
        i, r, g = self._row(p)
        k = self.index_of(p)
        if self.table is None:
            return {"image_sha256": sha256_bytes(self.prior_samples[i].float().contiguous().numpy().tobytes())}
        row = self.table[r]
        out = {"image_sha256": _cell_sha256(row["image"]), **self._text(row)}
        if self.masks:
            gen = self.masks[g]
            if isinstance(gen, FileMask):
                out["mask_sha256"] = sha256_file(gen.files[k % len(gen.files)])
        elif "mask" in row:
            out["mask_sha256"] = _cell_sha256(row["mask"])
        return out

    def _text(self, row: dict | None) -> dict[str, str]:
        """The item's non-empty prompts: the row's columns where set, else the run's."""
        text = dict(self.text)
        text.update({c: str(row[c]) for c in TEXT_COLUMNS if row is not None and row.get(c) is not None})
        return {c: v for c, v in text.items() if v}

    def __getitem__(self, p: int) -> dict:
        if p < 0 or p >= len(self):
            raise IndexError(p)
        i, r, g = self._row(p)
        k = self.index_of(p)
        label, path, row = -1, f"prior sample {r}", None
        if self.table is None:
            x = self.prior_samples[i].float()
        else:
            row = self.table[r]
            src, path = self._cell(row, "image")
            x, native, box = read_image(src, where=f"dataset index {k} (file {path})", size=self.image_size,
                                        channels=self.channels, resize=self.resize)
            for key in ("label", "class_id", "class"):
                if key in row and row[key] is not None:
                    label = int(row[key])
                    break
        size = tuple(x.shape[-2:])
        if self.masks:
            gen = self.masks[g]
            if isinstance(gen, FileMask) and self.table is not None:   # the image's crop and resize
                where = f"dataset index {k} (mask file {gen.files[k % len(gen.files)]})"
                m = fit_mask_to_image(gen.native(k), native, size, self.resize, where=where)[None].to(torch.float32)
            else:
                m = gen(index=k, seed=self.seed, size=size)
            name = gen.name
        else:
            msrc, mpath = self._cell(row, "mask")
            where = f"dataset index {k} (mask file {mpath})"
            m = load_image(msrc, where=where, channels=1)
            m, name = check_mask(_same_geometry(m, native, box, size, where=where, image=path), where=where), "file"
        return {"image": x, "mask": m, "index": k, "image_index": r, "mask_name": name, "label": label,
                "path": path, **{c: "" for c in TEXT_COLUMNS}, **self._text(row)}


def _cell_sha256(v: object) -> str:
    """SHA-256 of an image cell of a `datasets` table ({"path", "bytes"} or a path)."""
    if isinstance(v, dict):
        return sha256_bytes(v["bytes"]) if v.get("bytes") is not None else sha256_file(v["path"])
    return sha256_file(str(v))


def _same_geometry(m: Tensor, native: tuple[int, int], box: tuple[int, int, int, int] | None,
                   size: tuple[int, int], *, where: str, image: str) -> Tensor:
    """A mask read as [1, h, w] in [−1, 1], as {0, 1} values [1, H, W] with the geometry of its image: a mask
    of the image file's size gets the image's crop and resize (nearest neighbour); one already of the
    final size is kept."""
    m = (m + 1) / 2
    hw = tuple(m.shape[-2:])
    if hw == size:
        return m
    if hw == native and box is not None:
        if not bool(((m == 0) | (m == 1)).all()):
            return m   # check_mask names the non-binary values
        return fit_mask(m[0] > 0.5, box, size).to(torch.float32)[None]
    raise ValueError(f"{where}: mask size {hw} matches neither its image's file size {native} nor the size "
                     f"{size} it is used at (image {image}); save the mask at the image's size")


def _check_count(name: str, value: object, *, low: int, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"data.{name} must be an integer >= {low}{' or None' if none_ok else ''}, got {value!r}")


def collate(items: list[dict]) -> dict:
    """Stack tensors; keep strings as lists."""
    out: dict = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], Tensor) else (
            torch.tensor(vals) if isinstance(vals[0], int) else vals)
    return out


class PendingSampler(DistributedSampler):
    """One rank's share of the pending dataset indices, `pending[rank::num_replicas]`, in order, unpadded.

    A rank may get none (a resume with fewer pending indices than ranks). Being a `DistributedSampler`, it
    is used by Lightning as is, instead of being split again by Lightning's predict sampler (which requires
    at least one index per rank). On a fresh run the shares are those Lightning's sampler would give.
    """

    def __init__(self, dataset: Dataset, pending: list[int], *, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.share = list(pending)[rank::num_replicas]

    def __iter__(self):
        return iter(self.share)

    def __len__(self) -> int:
        return len(self.share)


class InverseProblemDataModule(L.LightningDataModule):
    """Predict-time data for inverse problems.

    Args:
        source: image folder, Hub dataset id, or "prior" (samples of the analytic prior given by `set_prior`;
            `VIPaintModule.setup` gives its own).
        split: dataset split (a plain folder has a single split, used whatever the name).
        masks: mask generators (the dataset becomes images × generators); None: masks from the files.
        num_images: use the first N images (None: all), or N images from row `start`.
        start: None (the first images; dataset index image + N × mask type, as before splits existed) or the
            first row of a benchmark split: rows start … start+N−1, global dataset index row × G + mask type
            (G mask generators), and a prior source draws each row from its own seed, so an image's index,
            ground truth, seeds and results do not depend on the split that holds it.
        image_size: resize to this square size (None: keep), after a centre crop to a square for images of
            another aspect ratio (`resize`); masks from files get the same geometry.
        resize: how an image of another aspect ratio is fitted: "crop" (centre crop), "stretch" or "none"
            (an error).
        channels: 1 or 3 to convert; None keeps the files' mode.
        seed: global seed for masks (and prior samples).
        batch_size, num_workers: DataLoader settings; results do not depend on batch size.
        cache_dir: `datasets` cache folder.
        prompt, negative_prompt: the prompts of a text-conditioned prior for items whose metadata.jsonl row
            sets none (`--data.prompt "..."`).
    """

    def __init__(self, source: str = "prior", *, split: str = "test", masks: list[MaskGenerator] | None = None,
                 num_images: int | None = 16, image_size: int | None = None, channels: int | None = None,
                 seed: int = 0, batch_size: int = 8, num_workers: int = 0, cache_dir: str | None = None,
                 resize: str = "crop", start: int | None = None, prompt: str = "",
                 negative_prompt: str = "") -> None:
        super().__init__()
        _check_count("num_images", num_images, low=1, none_ok=True)
        _check_count("start", start, low=0, none_ok=True)
        _check_count("image_size", image_size, low=1, none_ok=True)
        _check_count("batch_size", batch_size, low=1)
        _check_count("num_workers", num_workers, low=0)
        if channels not in (None, 1, 3):
            raise ValueError(f"data.channels must be 1, 3 or None, got {channels!r}")
        if resize not in RESIZE_POLICIES:
            raise ValueError(f"data.resize must be one of {RESIZE_POLICIES}, got {resize!r}")
        self.save_hyperparameters(ignore=["masks"])
        self.masks = masks
        self.dataset: InverseProblemDataset | None = None
        self.prior: Prior | None = None
        self.done: Callable[..., bool] | None = None
        # under DDP a rank may get no pending index (a resume with fewer pending indices than ranks)
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def set_prior(self, prior: Prior | None) -> None:
        """The analytic prior whose samples are the ground truths of source "prior" (unused otherwise)."""
        if prior is not self.prior and self.hparams.source == "prior":
            self.dataset = None
        self.prior = prior

    def skip_done(self, done: Callable[..., bool] | None) -> None:
        """Leave out of `predict_dataloader` the indices k with `done(k, path=..., mask=...)` true (the
        `PredictionWriter.is_done` of the run folder, also given the item's `fingerprint`, which may raise
        when k now names another image or mask type, or a changed file); None: yield every index."""
        self.done = done

    def setup(self, stage: str | None = None) -> None:
        if self.hparams.source != "prior":   # with source "prior" the dataset waits for `set_prior`
            self.full_dataset()

    def full_dataset(self) -> InverseProblemDataset:
        """Every index of the configured data (built on first use)."""
        if self.dataset is not None:
            return self.dataset
        h = self.hparams
        samples = None
        if h.source == "prior":
            if self.prior is None or not hasattr(self.prior, "sample"):
                raise ValueError("data source 'prior' needs an analytic prior (GaussianMixturePrior) in the model "
                                 "(InverseProblemDataModule.set_prior; VIPaintModule.setup passes its prior)")
            if h.get("start") is None:
                samples = self.prior.sample(h.num_images or 16, torch.Generator().manual_seed(int(h.seed) + 7919)).cpu()
            else:       # row r from its own stream: the same image whatever the split
                rows = range(h.start, h.start + (h.num_images or 16))
                samples = torch.cat([self.prior.sample(1, torch.Generator().manual_seed(
                    derive_seed(h.seed, r, "prior_sample"))).cpu() for r in rows])
        self.dataset = InverseProblemDataset(source=h.source, split=h.split, masks=self.masks,
                                             num_images=h.num_images, image_size=h.image_size,
                                             channels=h.channels, seed=h.seed,
                                             cache_dir=h.cache_dir or os.environ.get("VIPAINT_DATA_CACHE"),
                                             prior_samples=samples, resize=h.get("resize", "crop"),
                                             start=h.get("start"), prompt=h.get("prompt", ""),
                                             negative_prompt=h.get("negative_prompt", ""))
        return self.dataset

    def pending(self) -> list[int]:
        """The positions (`InverseProblemDataset.index_of` gives their dataset indices) still to compute, in order."""
        ds = self.full_dataset()
        if self.done is None:
            return list(range(len(ds)))
        out = []
        for p in range(len(ds)):
            path, mask = ds.describe(p)
            if not self.done(ds.index_of(p), path=path, mask=mask, fingerprint=ds.fingerprint(p)):
                out.append(p)
        return out

    def predict_dataloader(self) -> DataLoader:
        # Lightning holds every rank at a barrier after this call, so all ranks read the same finished
        # outputs (nothing is written before the barrier) and shard the same pending list
        ds = self.full_dataset()
        keep = self.pending()
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        if len(keep) < len(ds) and rank == 0:
            print(f"[vipaint] {len(ds) - len(keep)} of {len(ds)} indices already done, {len(keep)} to compute")
        return DataLoader(ds, batch_size=self.hparams.batch_size, sampler=PendingSampler(ds, keep, num_replicas=world,
                          rank=rank), num_workers=self.hparams.num_workers, collate_fn=collate)
