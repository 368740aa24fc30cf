"""Property tests for every measurement operator (docs/algorithm.md §1, Observation)."""

from __future__ import annotations

import pytest
import torch

from vipaint.operators import Downsample, GaussianBlur, Identity, Inpainting, LinearOperator, operator_matrix
from vipaint.seeding import ImageRNG

B = 2
OPS = ["inpainting", "blur", "down2-area", "down2-bicubic", "down4-area", "down4-bicubic", "identity"]
SHAPES = [(1, 8, 8), (3, 8, 8), (1, 16, 16), (3, 16, 16)]
EXACT = {"inpainting", "identity", "down2-area", "down4-area"}  # closed-form A⁺; the rest use CG




def make_op(name: str, shape: tuple[int, int, int], *, sigma_y: float = 0.05, seed: int = 0) -> LinearOperator:
    _, h, w = shape
    if name == "inpainting":
        g = torch.Generator().manual_seed(seed)
        mask = (torch.rand(B, 1, h, w, generator=g) > 0.5).float()
        mask[:, :, 0, 0], mask[:, :, -1, -1] = 1.0, 0.0   # at least one observed pixel and one hole
        return Inpainting(mask, sigma_y=sigma_y)
    if name == "blur":
        return GaussianBlur(kernel_size=5, sigma=1.5, sigma_y=sigma_y)
    if name.startswith("down"):
        factor, mode = name[4:].split("-")
        return Downsample(factor=int(factor), mode=mode, sigma_y=sigma_y)
    assert name == "identity"
    return Identity(sigma_y=sigma_y)


def expected_out_shape(name: str, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    c, h, w = shape
    if name.startswith("down"):
        f = int(name[4:].split("-")[0])
        return (c, h // f, w // f)
    return shape


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


params = pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
ops = pytest.mark.parametrize("name", OPS)


@ops
@params
def test_output_shape(name, shape):
    op = make_op(name, shape)
    want = expected_out_shape(name, shape)
    assert op.output_shape(shape) == want
    assert tuple(op(rand(B, *shape)).shape) == (B,) + want


@ops
@params
def test_linearity(name, shape):
    op = make_op(name, shape)
    x, z = rand(B, *shape, seed=1), rand(B, *shape, seed=2)
    a, b = 0.7, -2.3
    torch.testing.assert_close(op(a * x + b * z), a * op(x) + b * op(z), rtol=1e-10, atol=1e-10)


@ops
@params
def test_adjointness(name, shape):
    op = make_op(name, shape)
    x = rand(B, *shape, seed=3)
    y = rand(B, *expected_out_shape(name, shape), seed=4)
    aty = op.adjoint(y, shape)
    assert aty.shape == x.shape
    lhs = (op(x) * y).flatten(1).sum(1)           # per image ⟨A x, y⟩
    rhs = (x * aty).flatten(1).sum(1)             # per image ⟨x, Aᵀ y⟩
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10)
    # Aᵀ is the transpose of the dense matrix, not just anything satisfying one inner product
    A = operator_matrix(op, shape).double()       # [B or 1, P, D]
    dense = torch.einsum("bpd,bp->bd", A.expand(B, -1, -1), y.flatten(1))
    torch.testing.assert_close(aty.flatten(1), dense, rtol=1e-6, atol=1e-6)


@ops
@params
def test_broadcast_over_sample_dim(name, shape):
    op = make_op(name, shape)
    s = 3
    x = rand(s, B, *shape, seed=5)
    out = op(x)
    assert out.shape == (s, B) + expected_out_shape(name, shape)
    for i in range(s):
        torch.testing.assert_close(out[i], op(x[i]), rtol=0, atol=1e-12)
    y = rand(s, B, *expected_out_shape(name, shape), seed=6)
    adj = op.adjoint(y, shape)
    assert adj.shape == x.shape
    for i in range(s):
        torch.testing.assert_close(adj[i], op.adjoint(y[i], shape), rtol=0, atol=1e-12)


@ops
@params
def test_pinv_reproduces_measurement(name, shape):
    op = make_op(name, shape)
    x = rand(B, *shape, seed=7)
    y = op(x)
    xp = op.pinv(y, shape)
    assert xp.shape == x.shape
    back = op(xp)
    if name in EXACT:
        torch.testing.assert_close(back, y, rtol=1e-10, atol=1e-10)
    else:  # regularised conjugate gradients: δ = 1e-4 bounds the residual by ~√δ/2 per singular direction
        rel = (back - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)
        assert (rel < 2.5e-2).all(), rel
        # and CG converges to the dense regularised solution (AᵀA + δI)⁻¹ Aᵀ y
        A = operator_matrix(op, shape).double()[0]
        ref = torch.linalg.solve(A.T @ A + 1e-4 * torch.eye(A.shape[1], dtype=A.dtype), A.T @ y.flatten(1).T).T
        err = (xp.flatten(1) - ref).norm(dim=1) / ref.norm(dim=1)
        assert (err < 1e-2).all(), err
    if name in ("down2-area", "down4-area"):  # A⁺ is the minimum-norm solution: nearest upsampling
        f = int(name[4])
        up = torch.nn.functional.interpolate(y, scale_factor=f, mode="nearest")
        torch.testing.assert_close(xp, up, rtol=1e-12, atol=1e-12)


@ops
@params
def test_operator_matrix_matches_forward(name, shape):
    op = make_op(name, shape)
    A = operator_matrix(op, shape)
    p, d = (torch.Size(expected_out_shape(name, shape)).numel(), torch.Size(shape).numel())
    assert A.shape == (op.batch_size or 1, p, d)
    x = torch.randn(B, *shape, generator=torch.Generator().manual_seed(8))
    want = op(x).flatten(1)
    got = torch.einsum("bpd,bd->bp", A.expand(B, -1, -1), x.flatten(1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@ops
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)], ids=["1x8x8", "3x16x16"])
def test_observe_noise(name, shape):
    sigma = 0.1
    op = make_op(name, shape, sigma_y=sigma)
    x = rand(B, *shape, seed=9).float()
    ax = op(x)
    y1 = op.observe(x, ImageRNG(3, [0, 1], "observation"))
    y2 = op.observe(x, ImageRNG(3, [0, 1], "observation"))
    y3 = op.observe(x, ImageRNG(3, [5, 6], "observation"))
    assert y1.shape == ax.shape
    assert torch.equal(y1, y2)                         # same seed / indices: identical
    for b in range(B):                                 # different index: different noise, per image
        assert not torch.allclose(y1[b], y3[b])
    noise = y1 - ax
    if name == "inpainting":
        hole = op.mask.expand_as(noise) == 0
        assert (y1[hole] == 0).all()                   # holes of y stay exactly 0
        assert (noise[~hole] != 0).all()
        obs = noise[~hole]
    else:
        assert (noise != 0).all()
        obs = noise.flatten()
    assert 0.6 * sigma < obs.std().item() < 1.4 * sigma
    # the noise of image b depends only on its own index, not on its batch neighbours
    if op.batch_size is None:
        y_single = op.observe(x[1:], ImageRNG(3, [1], "observation"))
        torch.testing.assert_close(y_single[0], y1[1])
    # sigma_y = 0: exactly A x, no RNG needed; sigma_y > 0 without RNG: an error
    clean = make_op(name, shape, sigma_y=0.0)
    assert torch.equal(clean.observe(x), clean(x))
    with pytest.raises(ValueError, match="ImageRNG"):
        op.observe(x)


def test_inpainting_paste():
    op = make_op("inpainting", (1, 8, 8))
    x, y = torch.full((B, 1, 8, 8), 5.0), torch.full((B, 1, 8, 8), -1.0)
    out = op.paste(x, y)
    m = op.mask.bool()
    assert (out[m] == -1).all() and (out[~m] == 5).all()


@pytest.mark.parametrize("mask_shape", [(2, 8, 8), (2, 3, 8, 8), (8, 8), (1, 2, 1, 8, 8)])
def test_bad_mask_shape(mask_shape):
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        Inpainting(torch.ones(mask_shape))


@pytest.mark.parametrize("k", [4, 0, -3])
def test_blur_bad_kernel_size(k):
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(kernel_size=k, sigma=1.0)


def test_blur_bad_sigma():
    with pytest.raises(ValueError, match="sigma"):
        GaussianBlur(kernel_size=5, sigma=0.0)


@pytest.mark.parametrize("ctor", [
    lambda s: Inpainting(torch.ones(1, 1, 4, 4), sigma_y=s),
    lambda s: GaussianBlur(kernel_size=5, sigma=1.5, sigma_y=s),
    lambda s: Downsample(factor=2, sigma_y=s),
    lambda s: Identity(sigma_y=s),
], ids=["inpainting", "blur", "sr", "identity"])
def test_negative_sigma_y(ctor):
    with pytest.raises(ValueError, match="sigma_y"):
        ctor(-0.01)
    assert ctor(0.0).sigma_y == 0.0


@pytest.mark.parametrize("mode", ["area", "bicubic"])
def test_downsample_not_divisible(mode):
    op = Downsample(factor=4, mode=mode)
    with pytest.raises(ValueError, match="not divisible"):
        op(torch.zeros(1, 1, 10, 12))
    with pytest.raises(ValueError, match="not divisible"):
        op(torch.zeros(1, 1, 16, 6))


def test_downsample_bad_args():
    with pytest.raises(ValueError, match="factor"):
        Downsample(factor=0)
    with pytest.raises(ValueError, match="mode"):
        Downsample(factor=2, mode="nearest")


def test_blur_kernel_too_large():
    op = GaussianBlur(kernel_size=61, sigma=3.0)
    with pytest.raises(ValueError, match="too large"):
        op(torch.zeros(1, 1, 16, 16))
    # the boundary: kernel_size // 2 must be < the image side
    ok = GaussianBlur(kernel_size=31, sigma=3.0)
    assert ok(torch.zeros(1, 1, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="too large"):
        GaussianBlur(kernel_size=33, sigma=3.0)(torch.zeros(1, 1, 16, 16))


def test_blur_preserves_constants_and_kernel_normalised():
    op = GaussianBlur(kernel_size=5, sigma=1.5)
    assert abs(op.kernel.sum().item() - 1.0) < 1e-6
    x = torch.full((1, 3, 8, 8), 0.37)
    torch.testing.assert_close(op(x), x)   # reflect padding + normalised kernel keep constants
