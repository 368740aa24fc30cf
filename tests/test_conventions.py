"""The field's conventions, pinned against independent float64 implementations written here in numpy:
SSIM (Wang et al. 2004 as computed by skimage / piq / DeepInverse: [0, 1] images, data range 1, 11×11
Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, valid windows only), PSNR, and the operators' forward maps
and adjoints (reflect-padded Gaussian blur, area and antialiased bicubic downsampling, inpainting)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from vipaint.metrics.image import psnr, ssim, ssim_hole
from vipaint.operators import Downsample, GaussianBlur, Identity, Inpainting

FASHION = Path(__file__).resolve().parents[1] / "data" / "fashion_mnist" / "test"


# ----------------------------------------------------------------------------- SSIM reference


def ref_window(k: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised k×k Gaussian weights."""
    r = np.arange(k) - (k - 1) / 2
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return w / w.sum()


def ref_ssim_map(u: np.ndarray, v: np.ndarray, k: int = 11) -> np.ndarray:
    """SSIM of two [H, W] images in [0, 1] for every k×k window that fits, with explicit windows and
    two-pass (centred) weighted variances: [H − k + 1, W − k + 1]."""
    w = ref_window(k)
    pu, pv = sliding_window_view(u, (k, k)), sliding_window_view(v, (k, k))   # [H', W', k, k]
    mu_u, mu_v = (pu * w).sum((-2, -1)), (pv * w).sum((-2, -1))
    du, dv = pu - mu_u[..., None, None], pv - mu_v[..., None, None]
    var_u, var_v, cov = (w * du**2).sum((-2, -1)), (w * dv**2).sum((-2, -1)), (w * du * dv).sum((-2, -1))
    c1, c2 = 0.01**2, 0.03**2
    return (2 * mu_u * mu_v + c1) * (2 * cov + c2) / ((mu_u**2 + mu_v**2 + c1) * (var_u + var_v + c2))


def ref_ssim(x: torch.Tensor, ref: torch.Tensor, k: int = 11) -> np.ndarray:
    """Per-image SSIM of [B, C, H, W] images in [−1, 1]: mapped to [0, 1], per channel, then averaged."""
    u, v = (x.double().numpy() + 1) / 2, (ref.double().numpy() + 1) / 2
    return np.array([np.mean([ref_ssim_map(u[b, c], v[b, c], k).mean() for c in range(u.shape[1])])
                     for b in range(u.shape[0])])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fashion(n: int = 2) -> torch.Tensor:
    """The first n Fashion-MNIST test images of the repository, [n, 1, 32, 32] in [−1, 1]."""
    imgs = [np.asarray(Image.open(FASHION / f"{i:05d}.png"), dtype=np.float64) / 127.5 - 1 for i in range(n)]
    return torch.from_numpy(np.stack(imgs)[:, None]).float()


def _checkerboard(h: int, w: int, cell: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (((i // cell + j // cell) % 2) * 2 - 1).float()


def _pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Image pairs (x, ref) in [−1, 1]: random, structured and real."""
    rnd = torch.rand(3, 3, 32, 32, generator=_gen(0)) * 2 - 1
    ramp = torch.linspace(-1, 1, 32)
    horizontal, vertical = ramp[None, :].expand(32, 32), ramp[:, None].expand(32, 32)
    board = _checkerboard(32, 32, 4)[None, None]
    smooth = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(board, (1, 1, 1, 1), mode="reflect"), 3, 1)
    fashion = _fashion()
    holed = fashion.clone()
    holed[..., 8:24, 8:24] = -1.0
    holed = (holed + 0.1 * torch.randn(holed.shape, generator=_gen(1))).clamp(-1, 1)
    return {
        "random-vs-noisy": ((rnd + 0.3 * torch.randn(rnd.shape, generator=_gen(2))).clamp(-1, 1), rnd),
        "random-vs-random": (torch.rand(2, 1, 32, 32, generator=_gen(3)) * 2 - 1, rnd[:2, :1]),
        "ramps": (torch.stack([horizontal, 0.5 * horizontal])[:, None], torch.stack([vertical, horizontal])[:, None]),
        "checkerboard-vs-smoothed": (smooth, board),
        "fashion-hole-noise": (holed, fashion),
        "non-square": (torch.rand(2, 2, 20, 36, generator=_gen(4)) * 2 - 1,
                       torch.rand(2, 2, 20, 36, generator=_gen(5)) * 2 - 1),
    }


@pytest.mark.parametrize("case", list(_pairs()))
def test_ssim_matches_published_formula(case: str) -> None:
    x, ref = _pairs()[case]
    got = ssim(x, ref)
    assert got.shape == (x.shape[0],) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref_ssim(x, ref), rtol=0, atol=1e-5)


def test_ssim_of_constant_images_by_hand() -> None:
    """Flat images: σ = 0, so SSIM = (2ab + C1) / (a² + b² + C1) on the [0, 1] values a, b."""
    a, b = 0.2, 0.6
    x, ref = torch.full((1, 1, 16, 16), 2 * a - 1), torch.full((1, 1, 16, 16), 2 * b - 1)
    want = (2 * a * b + 1e-4) / (a**2 + b**2 + 1e-4)
    torch.testing.assert_close(ssim(x, ref), torch.tensor([want], dtype=torch.float32))


def test_ssim_small_images_use_largest_odd_window() -> None:
    """Images under 11 px (tiny test images only) fall back to the largest odd window that fits."""
    x, ref = torch.rand(2, 1, 8, 9, generator=_gen(6)) * 2 - 1, torch.rand(2, 1, 8, 9, generator=_gen(7)) * 2 - 1
    np.testing.assert_allclose(ssim(x, ref).numpy(), ref_ssim(x, ref, k=7), rtol=0, atol=1e-5)


def test_ssim_hole_averages_windows_centred_in_the_hole() -> None:
    fashion = _fashion()
    mask = torch.ones(2, 1, 32, 32)
    mask[0, :, 10:20, 4:30] = 0
    mask[1, :, 20:, :] = 0                                   # touches the image border
    x = (fashion + 0.2 * torch.randn(fashion.shape, generator=_gen(8))).clamp(-1, 1)
    u, v = (x.double().numpy() + 1) / 2, (fashion.double().numpy() + 1) / 2
    hole = (1 - mask.numpy())[:, 0, 5:-5, 5:-5].astype(bool)   # window centres: pixels 5 … 26
    want = [ref_ssim_map(u[b, 0], v[b, 0])[hole[b]].mean() for b in range(2)]
    np.testing.assert_allclose(ssim_hole(x, fashion, mask).numpy(), want, rtol=0, atol=1e-5)
    edge = torch.ones(1, 1, 32, 32)
    edge[..., :3, :] = 0                                      # no window is centred in a 3-px top band
    assert torch.isnan(ssim_hole(x[:1], fashion[:1], edge)).all()


# ----------------------------------------------------------------------------- PSNR reference


def test_psnr_matches_reference() -> None:
    x, ref = torch.rand(3, 3, 16, 16, generator=_gen(9)) * 2 - 1, torch.rand(3, 3, 16, 16, generator=_gen(10)) * 2 - 1
    region = (torch.rand(3, 1, 16, 16, generator=_gen(11)) > 0.3).float()
    xd, rd = x.double().numpy(), ref.double().numpy()
    err2 = (xd - rd) ** 2
    for data_range in (2.0, 1.0):
        want = 10 * np.log10(data_range**2 / err2.reshape(3, -1).mean(1))
        np.testing.assert_allclose(psnr(x, ref, data_range=data_range).numpy(), want, rtol=1e-5)
    m = np.broadcast_to(region.numpy(), err2.shape)
    want = 10 * np.log10(4.0 / ((err2 * m).reshape(3, -1).sum(1) / m.reshape(3, -1).sum(1)))
    np.testing.assert_allclose(psnr(x, ref, mask=region).numpy(), want, rtol=1e-5)


# ----------------------------------------------------------------------------- operator references


def ref_blur(x: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """Correlation of [..., H, W] with a normalised k×k Gaussian after reflect padding (no edge repeat)."""
    p, (h, w) = k // 2, x.shape[-2:]
    xp = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(p, p), (p, p)], mode="reflect")
    kern = ref_window(k, sigma)
    return sum(kern[a, b] * xp[..., a:a + h, b:b + w] for a in range(k) for b in range(k))


def ref_area(x: np.ndarray, f: int) -> np.ndarray:
    h, w = x.shape[-2:]
    return x.reshape(*x.shape[:-2], h // f, f, w // f, f).mean((-3, -1))


def ref_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = −0.5, the antialiasing filter of PIL and PyTorch)."""
    t = np.abs(t)
    return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, a * (((t - 5) * t + 8) * t - 4), 0.0))


def ref_bicubic_matrix(n: int, m: int) -> np.ndarray:
    """[m, n] antialiased bicubic downsampling: the kernel stretched by the scale n / m, weights over the
    input pixels within its support, normalised to sum 1 (PIL's resampling; half-pixel centres)."""
    scale = n / m
    out = np.zeros((m, n))
    for i in range(m):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - 2 * scale + 0.5), 0), min(int(centre + 2 * scale + 0.5), n)
        j = np.arange(lo, hi)
        wts = ref_cubic((j - centre + 0.5) / scale)
        out[i, lo:hi] = wts / wts.sum()
    return out


def ref_bicubic(x: np.ndarray, f: int) -> np.ndarray:
    h, w = x.shape[-2:]
    return ref_bicubic_matrix(h, h // f) @ x @ ref_bicubic_matrix(w, w // f).T


MASK = (torch.rand(2, 1, 8, 12, generator=_gen(12)) > 0.5).float()
CASES = {  # name → (operator, numpy forward map); images [2, 2, 8, 12]
    "inpainting": (Inpainting(MASK), lambda x: MASK.double().numpy() * x),
    "blur5": (GaussianBlur(kernel_size=5, sigma=1.5), lambda x: ref_blur(x, 5, 1.5)),
    "blur7": (GaussianBlur(kernel_size=7, sigma=2.0), lambda x: ref_blur(x, 7, 2.0)),
    "area2": (Downsample(factor=2, mode="area"), lambda x: ref_area(x, 2)),
    "area4": (Downsample(factor=4, mode="area"), lambda x: ref_area(x, 4)),
    "bicubic2": (Downsample(factor=2, mode="bicubic"), lambda x: ref_bicubic(x, 2)),
    "bicubic4": (Downsample(factor=4, mode="bicubic"), lambda x: ref_bicubic(x, 4)),
    "identity": (Identity(), lambda x: x.copy()),
}
SHAPE = (2, 8, 12)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_and_adjoint_match_reference(name: str) -> None:
    """A x against the numpy forward map; Aᵀ y against the transpose of the dense matrix that the numpy
    forward map defines (per image: the inpainting mask differs between images)."""
    op, fwd = CASES[name]
    x = torch.randn(2, *SHAPE, generator=_gen(13), dtype=torch.float64)
    tol = 1e-6 if name.startswith("blur") else 1e-12    # the operator's blur kernel is float32-rounded
    np.testing.assert_allclose(op(x).numpy(), fwd(x.numpy()), rtol=0, atol=tol)
    d = int(np.prod(SHAPE))
    basis = np.eye(d).reshape(d, 1, *SHAPE).repeat(2, axis=1)                  # [D, B, C, H, W]
    dense = fwd(basis).reshape(d, 2, -1).transpose(1, 2, 0)                   # [B, P, D]
    y = torch.randn(2, dense.shape[1], generator=_gen(14), dtype=torch.float64)
    aty = op.adjoint(y.reshape(2, *op.output_shape(SHAPE)), SHAPE)
    want = np.einsum("bpd,bp->bd", dense, y.numpy())
    np.testing.assert_allclose(aty.reshape(2, -1).numpy(), want, rtol=0, atol=tol)
