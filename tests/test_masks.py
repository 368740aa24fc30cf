"""Mask generators, FileMask I/O and errors, check_mask (docs/algorithm.md §6)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vipaint.masks import (
    MASKS,
    BoxMask,
    FileMask,
    FreeFormMask,
    HalfPlaneMask,
    LineMask,
    MaskGenerator,
    RandomPixelMask,
    check_mask,
    hole_ratio,
    mask_from_name,
)

SIZES = [(32, 32), (64, 48), (256, 256)]
GENERATORS = {
    "box": BoxMask(),
    "box_random": BoxMask(size=0.25, random_position=True, margin=0.1),
    "half": HalfPlaneMask(),
    "freeform": FreeFormMask(),
    "line": LineMask(),
    "line_cols": LineMask(width=8, axis="cols"),
    "random": RandomPixelMask(p=0.3),
}
RANDOM = ["box_random", "half", "freeform", "random"]


def _save_png(path, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return str(path)


# -- every generator ------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("key", list(GENERATORS))
def test_shape_dtype_binary_reproducible(key: str, size: tuple[int, int]) -> None:
    gen = GENERATORS[key]
    m = gen(index=3, seed=11, size=size)
    assert m.shape == (1, *size) and m.dtype == torch.float32
    assert set(m.unique().tolist()) == {0.0, 1.0}
    torch.manual_seed(123)  # global state must not matter
    assert torch.equal(m, gen(index=3, seed=11, size=size))
    assert torch.equal(m, pickle.loads(pickle.dumps(gen))(index=3, seed=11, size=size))
    assert torch.equal(check_mask(m, where="test"), m)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("key", RANDOM)
def test_random_generators_depend_on_index_and_seed(key: str, size: tuple[int, int]) -> None:
    gen = GENERATORS[key]
    base = gen(index=0, seed=0, size=size)
    assert not torch.equal(base, gen(index=1, seed=0, size=size))
    assert not torch.equal(base, gen(index=0, seed=1, size=size))
    masks = {tuple(gen(index=i, seed=0, size=size).flatten().tolist()) for i in range(8)}
    assert len(masks) >= 6


def test_deterministic_generators_ignore_index() -> None:
    for gen in (BoxMask(), LineMask(), HalfPlaneMask(angle=30)):
        assert torch.equal(gen(index=0, seed=0, size=(32, 32)), gen(index=5, seed=9, size=(32, 32)))


def test_bad_size() -> None:
    for size in [(0, 32), (32,), (3.5, 4)]:
        with pytest.raises(ValueError, match="size"):
            BoxMask()(index=0, seed=0, size=size)


# -- box ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES + [(33, 17)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("frac", [0.5, 0.3])
def test_box_area_and_position(frac: float, size: tuple[int, int]) -> None:
    h, w = size
    bh, bw = round(frac * h), round(frac * w)
    m = BoxMask(size=frac)(index=0, seed=0, size=size)[0]
    assert hole_ratio(m) == pytest.approx(bh * bw / (h * w))
    rows, cols = torch.nonzero(m == 0, as_tuple=True)
    assert rows.min() == (h - bh) // 2 and cols.min() == (w - bw) // 2
    assert rows.max() - rows.min() + 1 == bh and cols.max() - cols.min() + 1 == bw
    gen = BoxMask(size=frac, random_position=True, margin=0.1)
    for i in range(20):
        m = gen(index=i, seed=0, size=size)[0]
        assert hole_ratio(m) == pytest.approx(bh * bw / (h * w))
        rows, cols = torch.nonzero(m == 0, as_tuple=True)
        assert rows.min() >= round(0.1 * h) and h - 1 - rows.max() >= round(0.1 * h)
        assert cols.min() >= round(0.1 * w) and w - 1 - cols.max() >= round(0.1 * w)


def test_box_default_is_dps_128_at_256() -> None:
    assert (BoxMask()(index=0, seed=0, size=(256, 256)) == 0).sum() == 128 * 128


def test_box_bad_args() -> None:
    for kw in [dict(size=0.0), dict(size=1.0), dict(size=0.5, margin=0.3), dict(margin=-0.1)]:
        with pytest.raises(ValueError, match="BoxMask"):
            BoxMask(**kw)


# -- half plane -----------------------------------------------------------------------------------
def _rotated_window_reference(theta: int, h: int, w: int) -> np.ndarray:
    """The paper's construction: (1.39·s)² array, lower half zeroed, rotated, centre-cropped (the crop's
    corners can fall outside the rotated array near 45°, since 1.39 < √2; those pixels are blank)."""
    s = max(h, w)
    side = int(round(1.39 * s))
    big = np.full((side, side), 255, np.uint8)
    big[side // 2:] = 0
    rot = np.asarray(Image.fromarray(big).rotate(theta, resample=Image.NEAREST, fillcolor=255))
    top, left = (side - h) // 2, (side - w) // 2
    return rot[top:top + h, left:left + w] > 127


@pytest.mark.parametrize("size", SIZES + [(33, 33)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_half_matches_rotate_and_crop(size: tuple[int, int]) -> None:
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    for theta in range(0, 360, 23):
        m = HalfPlaneMask(angle=theta)(index=0, seed=0, size=size)[0].numpy() > 0.5
        diff = m != _rotated_window_reference(theta, h, w)
        rad = math.radians(theta)
        dx, dy = xs - (w - 1) / 2, ys - (h - 1) / 2
        dist = np.abs(dx * math.sin(rad) + dy * math.cos(rad))
        covered = np.hypot(dx, dy) < round(1.39 * max(h, w)) / 2 - 1  # inside the rotated array
        assert (dist[diff & covered] <= 1.5).all(), f"theta={theta}: differences away from the boundary line"
        assert diff.sum() <= 2 * max(h, w)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_half_ratio_and_angles(size: tuple[int, int]) -> None:
    gen = HalfPlaneMask()
    for i in range(30):
        assert abs(hole_ratio(gen(index=i, seed=0, size=size)) - 0.5) <= 0.1
    m = HalfPlaneMask(angle=0)(index=0, seed=0, size=size)[0]
    assert (m[: size[0] // 2] == 1).all() and (m[(size[0] + 1) // 2:] == 0).all()  # θ = 0: lower half missing
    m = HalfPlaneMask(angle=90)(index=0, seed=0, size=size)[0]
    assert (m[:, (size[1] + 1) // 2:] == 0).all()  # θ = 90: right half missing


# -- free form ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_freeform_hole_range(size: tuple[int, int]) -> None:
    gen = FreeFormMask()
    ratios = [hole_ratio(gen(index=i, seed=0, size=size)) for i in range(50)]
    assert all(0.3 <= r <= 0.7 for r in ratios)
    assert max(ratios) - min(ratios) > 0.15  # not collapsed to one value


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("hole_range", [(0.3, 0.31), (0.0, 0.02), (0.95, 1.0)])
def test_freeform_fallback_terminates_within_range(hole_range: tuple[float, float], size: tuple[int, int]) -> None:
    gen = FreeFormMask(hole_range=hole_range, max_tries=2)
    for i in range(5):
        m = gen(index=i, seed=0, size=size)
        assert hole_range[0] <= hole_ratio(m) <= hole_range[1]
        assert torch.equal(m, gen(index=i, seed=0, size=size))


def test_freeform_bad_args() -> None:
    for kw in [dict(hole_range=(0.7, 0.3)), dict(hole_range=(-0.1, 0.5)), dict(vertices=(5, 2)),
               dict(stroke_width=(0, 4)), dict(max_tries=0)]:
        with pytest.raises(ValueError, match="FreeFormMask"):
            FreeFormMask(**kw)


# -- line, random pixels --------------------------------------------------------------------------
def test_line_pattern_and_scaling() -> None:
    m = LineMask()(index=0, seed=0, size=(32, 32))[0]
    assert (m[0::2] == 1).all() and (m[1::2] == 0).all()
    m = LineMask(width=8)(index=0, seed=0, size=(256, 256))[0]
    assert (m[:8] == 1).all() and (m[8:16] == 0).all() and (m[16:24] == 1).all()
    m = LineMask(width=8)(index=0, seed=0, size=(64, 48))[0]  # 8 px at 256² → 2 px at height 64
    assert (m[:2] == 1).all() and (m[2:4] == 0).all()
    m = LineMask(width=2, axis="cols")(index=0, seed=0, size=(32, 48))[0]  # scaled to the minimum of 1 px
    assert (m[:, 0::2] == 1).all() and (m[:, 1::2] == 0).all()
    for size in SIZES:
        assert hole_ratio(LineMask()(index=0, seed=0, size=size)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="LineMask"):
        LineMask(axis="diag")  # type: ignore[arg-type]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_random_pixel_ratio(p: float) -> None:
    gen = RandomPixelMask(p=p)
    assert abs(hole_ratio(gen(index=0, seed=0, size=(256, 256))) - p) < 0.01
    assert abs(np.mean([hole_ratio(gen(index=i, seed=0, size=(32, 32))) for i in range(20)]) - p) < 0.02
    with pytest.raises(ValueError, match="RandomPixelMask"):
        RandomPixelMask(p=1.5)


# -- files ----------------------------------------------------------------------------------------
def test_file_mask_round_trip_resize_invert(tmp_path) -> None:
    folder = tmp_path / "masks"
    folder.mkdir()
    gens = [BoxMask(), HalfPlaneMask(angle=40), FreeFormMask()]
    truth = [g(index=i, seed=0, size=(64, 64)) for i, g in enumerate(gens)]
    for i, m in enumerate(truth):  # white (255) = observed
        _save_png(folder / f"{i:03d}.png", (m[0].numpy() * 255).astype(np.uint8))
    (folder / "notes.txt").write_text("ignored")
    fm = FileMask(path=str(folder))
    assert len(fm) == 3 and fm.files[0].endswith("000.png")
    for i, m in enumerate(truth):
        assert torch.equal(fm(index=i, seed=5, size=(64, 64)), m)
    assert torch.equal(fm(index=4, seed=0, size=(64, 64)), truth[1])  # index % n
    # resizing: nearest, so an exact 2x upsample repeats each pixel
    up = fm(index=0, seed=0, size=(128, 128))
    assert up.shape == (1, 128, 128)
    assert torch.equal(up[:, ::2, ::2], truth[0]) and torch.equal(up[:, 1::2, 1::2], truth[0])
    down = fm(index=2, seed=0, size=(32, 24))
    assert down.shape == (1, 32, 24) and set(down.unique().tolist()) <= {0.0, 1.0}
    inv = FileMask(path=str(folder), invert=True)
    assert torch.equal(inv(index=1, seed=0, size=(64, 64)), 1 - truth[1])
    # a list of files, 0/1 PNG, .npy and .npz, RGB and mode "1" images
    files = [_save_png(tmp_path / "a.png", truth[0][0].numpy().astype(np.uint8))]  # 0/1 values
    np.save(tmp_path / "b.npy", truth[1][0].numpy().astype(bool))
    np.savez(tmp_path / "c.npz", mask=truth[2][0].numpy())
    rgb = np.repeat((truth[1][0].numpy() * 255).astype(np.uint8)[..., None], 3, axis=-1)
    files += [str(tmp_path / "b.npy"), str(tmp_path / "c.npz"), _save_png(tmp_path / "d.png", rgb)]
    Image.fromarray(truth[2][0].numpy() > 0.5).save(tmp_path / "e.png")
    files.append(str(tmp_path / "e.png"))
    fl = FileMask(path=files)
    for i, m in enumerate([truth[0], truth[1], truth[2], truth[1], truth[2]]):
        assert torch.equal(fl(index=i, seed=0, size=(64, 64)), m), files[i]
    assert torch.equal(pickle.loads(pickle.dumps(fl))(index=1, seed=0, size=(64, 64)), truth[1])
    assert isinstance(mask_from_name("file", path=files[0]), FileMask)


def test_file_mask_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        FileMask(path=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*no mask files"):
        FileMask(path=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        FileMask(path=[str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="empty"):
        FileMask(path=[])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="cannot read mask file.*broken.png"):
        FileMask(path=[str(bad)])(index=0, seed=0, size=(8, 8))
    np.savez(tmp_path / "two.npz", a=np.ones((4, 4)), b=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="two.npz.*'mask'"):
        FileMask(path=[str(tmp_path / "two.npz")])(index=0, seed=0, size=(4, 4))
    np.save(tmp_path / "cube.npy", np.ones((2, 5, 4, 4)))
    with pytest.raises(ValueError, match="cube.npy.*shape"):
        FileMask(path=[str(tmp_path / "cube.npy")])(index=0, seed=0, size=(4, 4))
    grey = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    path = _save_png(tmp_path / "grey.png", grey)
    with pytest.raises(ValueError, match="grey.png.*not binary.*binarize=True"):
        FileMask(path=path)(index=0, seed=0, size=(32, 32))
    m = FileMask(path=path, binarize=True)(index=0, seed=0, size=(32, 32))[0]
    assert torch.equal(m, torch.from_numpy(grey >= 128).float().expand(32, 32))
    almost = np.full((32, 32), 255, np.uint8)
    almost[:16] = 0
    almost[0, :5] = 100  # a few anti-aliased pixels are tolerated
    assert hole_ratio(FileMask(path=_save_png(tmp_path / "aa.png", almost))(index=0, seed=0, size=(32, 32))) == 0.5


# -- registry, helpers ----------------------------------------------------------------------------
def test_mask_from_name() -> None:
    assert set(MASKS) == {"box", "half", "freeform", "line", "random", "file"}
    for name, cls in MASKS.items():
        assert cls.name == name and issubclass(cls, MaskGenerator)
    gen = mask_from_name("box", size=0.25, random_position=True)
    assert isinstance(gen, BoxMask) and gen.size == 0.25 and gen.random_position
    assert isinstance(mask_from_name("freeform", hole_range=(0.2, 0.4)), FreeFormMask)
    with pytest.raises(ValueError, match="unknown mask type 'circle'.*freeform"):
        mask_from_name("circle")
    with pytest.raises(TypeError):
        BoxMask(0.5)  # type: ignore[misc]  # keyword-only


def test_hole_ratio() -> None:
    m = torch.ones(1, 4, 4)
    m[0, :1] = 0
    assert hole_ratio(m) == 0.25 and hole_ratio(m.bool()) == 0.25


def test_check_mask() -> None:
    m = torch.ones(8, 8, dtype=torch.bool)
    m[2:4, 2:4] = False
    out = check_mask(m, where="dataset index 7")
    assert out.shape == (1, 8, 8) and out.dtype == torch.float32 and hole_ratio(out) == 4 / 64
    assert torch.equal(check_mask(out, where="x"), out)
    cases = [
        (torch.zeros(1, 8, 8), "no observed pixel"),
        (torch.ones(8, 8), "no hole"),
        (m.float() * 255, "not binary"),
        (m.float() * 0.5, "not binary"),
        (torch.full((8, 8), float("nan")), "not binary"),
        (m.float().expand(3, 8, 8), r"shape \(3, 8, 8\)"),
        (m.float()[None, None], "shape"),
        (torch.ones(8), "shape"),
    ]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=rf"dataset index 7 \(file masks/007.png\).*{msg}"):
            check_mask(bad, where="dataset index 7 (file masks/007.png)")
    with pytest.raises(ValueError, match="torch.Tensor"):
        check_mask(np.ones((8, 8)), where="here")  # type: ignore[arg-type]


def test_yaml_class_path_instantiation() -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--mask", type=MaskGenerator)
    cfg = parser.parse_args(["--mask", '{"class_path": "vipaint.masks.FreeFormMask", '
                                       '"init_args": {"hole_range": [0.2, 0.5]}}'])
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes
    gen = build(cfg).mask
    assert isinstance(gen, FreeFormMask) and gen.hole_range == (0.2, 0.5)


def test_file_mask_list_order_and_channels_first(tmp_path) -> None:
    a = np.zeros((8, 8), np.uint8)
    a[:, :4] = 255
    np.save(tmp_path / "z.npy", np.stack([a] * 3))  # [C, H, W]
    files = [str(tmp_path / "z.npy"), _save_png(tmp_path / "a.png", 255 - a)]
    fm = FileMask(path=files)  # a list keeps its order (it may be aligned with a dataset)
    assert torch.equal(fm(index=0, seed=0, size=(8, 8))[0], torch.from_numpy(a > 0).float())
    assert torch.equal(fm(index=1, seed=0, size=(8, 8))[0], torch.from_numpy(a == 0).float())


def test_mask_size_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    """Issue 22 case 10: a small file of huge dimensions (a 13000² PNG was 5 GB of memory) is refused from
    its header, for images and arrays alike."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 1, 0, 0, 0, 0))
                    + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match=r"big\.png'?: the image is 13000×13000 = 169000000 pixels.*MAX_PIXELS"):
        FileMask(path=str(big))(index=0, seed=0, size=(8, 8))
    monkeypatch.setenv("VIPAINT_MAX_PIXELS", "100")
    np.save(tmp_path / "m.npy", np.ones((20, 20), np.uint8))
    np.savez(tmp_path / "m.npz", mask=np.ones((20, 20), np.uint8))
    for name in ("m.npy", "m.npz"):
        with pytest.raises(ValueError, match=rf"{name}' holds an array of shape \(20, 20\), more than the limit of 1"):
            FileMask(path=str(tmp_path / name))(index=0, seed=0, size=(8, 8))
