"""InverseProblemDataset on a tiny image folder: items, masks (files and generators), seeding, the errors
that bad inputs give (each naming the dataset index or the file), and the DataModule's pending indices and
analytic prior. (The batch checks of VIPaintModule are in test_module.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vipaint.data import (
    DatasetNotFoundError,
    InverseProblemDataModule,
    InverseProblemDataset,
    PendingSampler,
    collate,
)
from vipaint.masks import BoxMask, FileMask, HalfPlaneMask

N, S = 4, 16




def _box_mask(size: int = S) -> np.ndarray:
    m = np.full((size, size), 255, np.uint8)
    m[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0
    return m


def make_folder(root: Path, *, n: int = N, masks: dict[int, np.ndarray] | None = None,
                garbage: tuple[int, ...] = (), rgb: bool = False) -> Path:
    """n grayscale (or RGB) 16×16 PNGs + masks/NNN.png + metadata.jsonl (file_name, mask_file_name, class_id)."""
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            name = f"{i:03d}.png"
            if i in garbage:
                (root / name).write_bytes(b"\x89PNG this is not an image at all" * 4)
            else:
                shape = (S, S, 3) if rgb else (S, S)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name)
            m = (masks or {}).get(i, _box_mask())
            Image.fromarray(m).save(root / "masks" / name)
            f.write(json.dumps({"file_name": name, "mask_file_name": f"masks/{name}", "class_id": 10 + i}) + "\n")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("imgs") / "data")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("cache"))


def test_items_from_files(folder, cache):
    ds = InverseProblemDataset(source=str(folder), cache_dir=cache)
    assert len(ds) == N
    for k in range(N):
        it = ds[k]
        assert it["image"].shape == (1, S, S) and it["image"].dtype == torch.float32
        assert it["mask"].shape == (1, S, S)
        assert it["index"] == k and it["image_index"] == k
        assert it["label"] == 10 + k
        assert it["mask_name"] == "file"
        assert Path(it["path"]).name == f"{k:03d}.png"
        # the exact pixels of the file, mapped to [−1, 1]
        raw = np.asarray(Image.open(folder / f"{k:03d}.png"), dtype=np.float32)
        torch.testing.assert_close(it["image"][0], torch.from_numpy(raw) / 127.5 - 1)
        assert it["image"].min() >= -1 and it["image"].max() <= 1
        # the mask is the file's: white = observed (1), black = hole (0)
        want = torch.from_numpy(_box_mask() > 0).float()[None]
        assert torch.equal(it["mask"], want)
    with pytest.raises(IndexError):
        ds[N]
    batch = collate([ds[0], ds[3]])
    assert batch["image"].shape == (2, 1, S, S) and batch["index"].tolist() == [0, 3]
    assert batch["label"].tolist() == [10, 13] and len(batch["path"]) == 2


def test_channels_and_num_images(folder, cache):
    ds = InverseProblemDataset(source=str(folder), cache_dir=cache, channels=3, num_images=2)
    assert len(ds) == 2
    it = ds[1]
    assert it["image"].shape == (3, S, S)
    assert torch.equal(it["image"][0], it["image"][2])   # grey → RGB copies the channel
    # resized images with generated masks: the masks follow the new size
    ds8 = InverseProblemDataset(source=str(folder), cache_dir=cache, image_size=8, masks=[BoxMask()])
    it8 = ds8[0]
    assert it8["image"].shape == (1, 8, 8) and it8["mask"].shape == (1, 8, 8)
    # file masks of the image's size get the image's geometry (nearest neighbour)
    ds8f = InverseProblemDataset(source=str(folder), cache_dir=cache, image_size=8)
    full = InverseProblemDataset(source=str(folder), cache_dir=cache)[0]["mask"]
    assert torch.equal(ds8f[0]["mask"], full[:, 1::2, 1::2])


def test_generators_product(folder, cache):
    gens = [BoxMask(size=0.5), HalfPlaneMask()]
    ds = InverseProblemDataset(source=str(folder), cache_dir=cache, masks=gens, seed=3)
    assert len(ds) == N * len(gens)
    for k in range(len(ds)):
        it = ds[k]
        assert it["image_index"] == k % N and it["index"] == k
        assert it["mask_name"] == gens[k // N].name
        assert torch.equal(it["image"], ds[k % N]["image"])
        assert torch.equal(it["mask"], gens[k // N](index=k, seed=3, size=(S, S)))
        assert it["label"] == 10 + k % N
    assert not torch.equal(ds[0]["mask"], ds[N]["mask"])   # box vs half-plane


def test_seeding(folder, cache):
    gens = [HalfPlaneMask(), BoxMask(size=0.4, random_position=True)]
    a = InverseProblemDataset(source=str(folder), cache_dir=cache, masks=gens, seed=0)
    b = InverseProblemDataset(source=str(folder), cache_dir=cache, masks=gens, seed=0)
    c = InverseProblemDataset(source=str(folder), cache_dir=cache, masks=gens, seed=1)
    for k in range(len(a)):
        ia, ib = a[k], b[k]
        assert torch.equal(ia["image"], ib["image"]) and torch.equal(ia["mask"], ib["mask"])
        assert ia["label"] == ib["label"] and ia["path"] == ib["path"]
    # different dataset indices draw different masks (half-plane angles, box positions)
    for g in range(len(gens)):
        masks = [a[g * N + i]["mask"] for i in range(N)]
        assert len({m.numpy().tobytes() for m in masks}) > 1
    # and a different global seed changes them
    assert any(not torch.equal(a[k]["mask"], c[k]["mask"]) for k in range(len(a)))


# -- errors -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory) -> Path:
    nonbinary = _box_mask()
    nonbinary[0, :4] = 128
    return make_folder(tmp_path_factory.mktemp("bad") / "data", n=6, garbage=(5,), masks={
        1: _box_mask(8),                          # 8×8 mask for a 16×16 image
        2: nonbinary,                             # grey values
        3: np.zeros((S, S), np.uint8),            # all hole
        4: np.full((S, S), 255, np.uint8),        # no hole
    })


@pytest.fixture(scope="module")
def bad_ds(bad_folder, cache) -> InverseProblemDataset:
    return InverseProblemDataset(source=str(bad_folder), cache_dir=cache)


@pytest.mark.parametrize("k, pattern", [
    (1, r"mask size \(8, 8\) matches neither its image's file size \(16, 16\) nor the size \(16, 16\)"),
    (2, r"not binary"),
    (3, r"no observed pixel"),
    (4, r"no hole"),
])
def test_bad_masks_name_index_and_file(bad_ds, k, pattern):
    assert bad_ds[0]["mask"].shape == (1, S, S)    # the good item of the same folder loads fine
    with pytest.raises(ValueError, match=pattern) as info:
        bad_ds[k]
    msg = str(info.value)
    assert f"dataset index {k}" in msg
    assert re.search(rf"masks/{k:03d}\.png", msg), msg


def test_unreadable_image(bad_ds):
    with pytest.raises(ValueError, match="cannot read the image") as info:
        bad_ds[5]
    msg = str(info.value)
    assert "dataset index 5" in msg and "005.png" in msg


def test_missing_folder(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DatasetNotFoundError) as info:
        InverseProblemDataset(source=str(missing), cache_dir=str(tmp_path / "cache"))
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_hub_id_offline(tmp_path):
    import os
    import time

    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"
    start = time.perf_counter()
    with pytest.raises(DatasetNotFoundError) as info:
        InverseProblemDataset(source="vipaint-tests/no-such-dataset", cache_dir=str(tmp_path / "cache"))
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert "vipaint-tests/no-such-dataset" in msg
    assert "HF_DATASETS_OFFLINE" in msg or "cache" in msg


def test_folder_without_masks_needs_generators(tmp_path):
    root = tmp_path / "nomask"
    root.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((S, S), np.uint8)).save(root / f"{i}.png")
    with pytest.raises(ValueError, match="no 'mask' column"):
        InverseProblemDataset(source=str(root), cache_dir=str(tmp_path / "cache"))
    ds = InverseProblemDataset(source=str(root), cache_dir=str(tmp_path / "cache"), masks=[BoxMask()])
    assert len(ds) == 2 and ds[1]["label"] == -1


# -- the DataModule: pending indices, the analytic prior ------------------------------------------------

def test_describe_matches_items(folder, cache):
    gens = [BoxMask(size=0.5), HalfPlaneMask()]
    for ds in (InverseProblemDataset(source=str(folder), cache_dir=cache, masks=gens),
               InverseProblemDataset(source=str(folder), cache_dir=cache),
               InverseProblemDataset(source="prior", prior_samples=torch.zeros(3, 1, S, S), masks=gens)):
        for k in range(len(ds)):
            assert ds.describe(k) == (ds[k]["path"], ds[k]["mask_name"])


def test_datamodule_yields_only_pending_indices(folder, cache):
    """Done indices are left out; every item keeps its dataset index, so its seeds are unchanged."""
    dm = InverseProblemDataModule(str(folder), masks=[BoxMask(size=0.5), HalfPlaneMask()], num_images=3,
                                  batch_size=2, seed=3, cache_dir=cache)
    dm.setup("predict")
    full = [it for batch in dm.predict_dataloader() for it in _items(batch)]
    assert [it["index"] for it in full] == list(range(6))
    calls = []

    def done(k, *, path, mask, fingerprint):
        calls.append((k, Path(path).name, mask))
        assert set(fingerprint) == {"image_sha256"}             # generated masks: the settings determine them
        return k in (0, 2, 3)

    dm.skip_done(done)
    assert dm.pending() == [1, 4, 5]
    assert calls[:4] == [(0, "000.png", "box"), (1, "001.png", "box"), (2, "002.png", "box"),
                         (3, "000.png", "half")]
    rest = [it for batch in dm.predict_dataloader() for it in _items(batch)]
    assert [it["index"] for it in rest] == [1, 4, 5]
    for it in rest:                                          # the very items of the full run
        same = full[it["index"]]
        assert torch.equal(it["image"], same["image"]) and torch.equal(it["mask"], same["mask"])
        assert it["path"] == same["path"] and it["mask_name"] == same["mask_name"]
    dm.skip_done(lambda k, **_: True)
    assert len(dm.predict_dataloader()) == 0
    dm.skip_done(None)
    assert dm.pending() == list(range(6))


def test_pending_sampler_shares():
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    ds = list(range(10))
    assert [list(PendingSampler(ds, [1, 4, 5], num_replicas=2, rank=r)) for r in (0, 1)] == [[1, 5], [4]]
    assert len(PendingSampler(ds, [7], num_replicas=3, rank=2)) == 0          # a rank may get nothing
    for r in range(3):                          # a fresh run: the shares of Lightning's own predict sampler
        assert list(PendingSampler(ds, list(range(10)), num_replicas=3, rank=r)) == \
            list(UnrepeatedDistributedSampler(ds, num_replicas=3, rank=r, shuffle=False))


def test_done_predicate_errors_propagate(folder, cache):
    dm = InverseProblemDataModule(str(folder), masks=[BoxMask()], num_images=2, cache_dir=cache)

    def done(k, *, path, mask, fingerprint):
        raise RuntimeError(f"index {k} is now another image")

    dm.skip_done(done)
    with pytest.raises(RuntimeError, match="index 0 is now another image"):
        dm.predict_dataloader()


def test_prior_source_needs_set_prior():
    from vipaint.priors import SyntheticMixturePrior

    dm = InverseProblemDataModule("prior", num_images=3, seed=2, masks=[BoxMask()])
    dm.setup("predict")                                      # nothing to build yet
    with pytest.raises(ValueError, match="needs an analytic prior"):
        dm.predict_dataloader()
    prior = SyntheticMixturePrior(image_shape=(1, 8, 8), seed=0)
    dm.set_prior(prior)
    ds = dm.full_dataset()
    truths = prior.sample(3, torch.Generator().manual_seed(2 + 7919))
    assert torch.equal(torch.stack([ds[k]["image"] for k in range(3)]), truths)
    other = SyntheticMixturePrior(image_shape=(1, 8, 8), seed=1)
    dm.set_prior(other)                                      # another prior: other ground truths
    assert not torch.equal(dm.full_dataset()[0]["image"], truths[0])
    dm.set_prior(other)
    assert dm.full_dataset() is dm.full_dataset()


def _items(batch: dict) -> list[dict]:
    """A collated batch back to its items."""
    return [{k: v[b] for k, v in batch.items()} | {"index": int(batch["index"][b])}
            for b in range(len(batch["index"]))]


# -- issue 22: geometry, range and size of image files ----------------------------------------------------

def test_non_square_image_and_its_mask_get_one_geometry(tmp_path, cache):
    """Case 1: a 100×37 image with its own 100×37 mask: the mask gets the image's centre crop and resize,
    so the hole stays on the same content."""
    root = tmp_path / "ns"
    (root / "masks").mkdir(parents=True)
    img = np.zeros((37, 100), np.uint8)
    mask = np.full((37, 100), 255, np.uint8)
    img[10:20, 40:50] = 255          # a bright square, exactly the hole
    mask[10:20, 40:50] = 0
    Image.fromarray(img).save(root / "a.png")
    Image.fromarray(mask).save(root / "masks" / "a.png")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "mask_file_name": "masks/a.png"}) + "\n")
    it = InverseProblemDataset(source=str(root), cache_dir=cache, image_size=37)[0]
    hole = it["mask"][0] == 0
    assert it["image"].shape == (1, 37, 37) and int(hole.sum()) == 100
    assert bool((it["image"][0][hole] == 1).all())                       # the hole covers the bright square
    assert int((it["image"][0] == 1).sum()) == 100
    with pytest.raises(ValueError, match=r"100×37 \(W×H\) but 37×37 is needed.*'crop'.*'stretch'"):
        InverseProblemDataset(source=str(root), cache_dir=cache, image_size=37, resize="none")[0]
    st = InverseProblemDataset(source=str(root), cache_dir=cache, image_size=37, resize="stretch")[0]
    assert st["image"].shape == (1, 37, 37) and int((st["mask"][0] == 0).sum()) > 0
    # the same mask as a FileMask generator (data.masks) gets the same geometry, not a squash to 37×37
    gen = InverseProblemDataset(source=str(root), cache_dir=cache, image_size=37,
                                masks=[FileMask(path=str(root / "masks" / "a.png"))])[0]
    assert torch.equal(gen["mask"], it["mask"])
    Image.fromarray(np.full((10, 20), 255, np.uint8)).save(tmp_path / "other.png")
    msg = r"mask file .*other\.png\): the mask is 20×10 \(W×H\) but the image is 100×37"
    with pytest.raises(ValueError, match=msg):
        InverseProblemDataset(source=str(root), cache_dir=cache, image_size=37,
                              masks=[FileMask(path=str(tmp_path / "other.png"))])[0]


@pytest.mark.parametrize(("kw", "message"), [
    ({"num_images": -1}, r"data.num_images must be an integer >= 1 or None, got -1"),
    ({"num_images": 0}, r"data.num_images must be an integer >= 1"),
    ({"batch_size": 0}, r"data.batch_size must be an integer >= 1, got 0"),
    ({"image_size": 2.5}, r"data.image_size must be an integer >= 1 or None"),
    ({"channels": 2}, r"data.channels must be 1, 3 or None, got 2"),
    ({"resize": "squash"}, r"data.resize must be one of \('none', 'crop', 'stretch'\)"),
])
def test_datamodule_options_are_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        InverseProblemDataModule("prior", **kw)


def _meta_folder(root: Path, lines: list[str]) -> Path:
    (root / "masks").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((S, S), np.uint8)).save(root / name)
        Image.fromarray(_box_mask()).save(root / "masks" / name)
    (root / "metadata.jsonl").write_text("".join(line + "\n" for line in lines))
    return root


@pytest.mark.parametrize(("lines", "message"), [
    ([], r"metadata\.jsonl lists no images"),
    (["", "  "], r"metadata\.jsonl lists no images"),
    (['{"file_name": "a.png", "mask_file_name": "masks/a.png"}', '{"file_name": "b.png",'],
     r"metadata\.jsonl, line 2: malformed JSON"),
    (['{"file_name": "a.png", "mask_file_name": "../outside.png"}'],
     r"metadata\.jsonl, line 1: mask_file_name '\.\./outside\.png' points outside the folder"),
    (['{"file_name": "a.png", "mask_file_name": "/etc/hostname"}'],
     r"line 1: mask_file_name '/etc/hostname' points outside"),
    (['{"file_name": "a.png", "mask_file_name": "masks/zz.png"}'],
     r"line 1: mask_file_name 'masks/zz\.png' does not exist"),
    (['{"file_name": "a.png", "mask_file_name": "masks/a.png"}',
      '{"file_name": "b.png", "mask_file_name": "masks/b.png"}',
      '{"file_name": "a.png", "mask_file_name": "masks/b.png"}'],
     r"line 3: file_name 'a\.png' is listed again \(first on line 1\)"),
    (['["a.png"]'], r'line 1: expected a JSON object with a "file_name" string'),
])
def test_metadata_errors_name_the_file_and_line(tmp_path, cache, lines, message):
    """Issue 22 cases 5 and 9: an empty metadata.jsonl, malformed JSON, a mask path escaping the folder and a
    file listed twice are clear errors (not an IndexError, a generic Hub message, or a double count)."""
    (tmp_path / "outside.png").write_bytes(b"")
    root = _meta_folder(tmp_path / "d", lines)
    with pytest.raises(ValueError, match=message) as info:
        InverseProblemDataset(source=str(root), cache_dir=cache)
    assert "Hub" not in str(info.value)
