"""Property tests for every measurement operator (docs/algorithm.md §1, Observation)."""

from __future__ import annotations

import pytest
import torch

from vipaint.operators import (
    Downsample,
    GaussianBlur,
    Identity,
    Inpainting,
    LinearOperator,
    gaussian_kernel_1d,
    operator_matrix,
    reflect_correlation_matrix,
)
from vipaint.seeding import ImageRNG

B = 2
OPS = ["inpainting", "blur", "down2-area", "down2-bicubic", "down4-area", "down4-bicubic", "identity"]
SHAPES = [(1, 8, 8), (3, 8, 8), (1, 16, 16), (3, 16, 16)]



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


def dense_matrix(op: LinearOperator, shape: tuple[int, int, int]) -> torch.Tensor:
    """Dense float64 matrices [B, P, D] of `op`, from its forward map on float64 basis images."""
    d = torch.Size(shape).numel()
    basis = torch.eye(d, dtype=torch.float64).reshape(d, 1, *shape).expand(d, B, *shape)
    return op(basis).reshape(d, B, -1).permute(1, 2, 0)


def dense_regularised_lstsq(a: torch.Tensor, y: torch.Tensor, delta: float) -> torch.Tensor:
    """argmin ‖A x − y‖² + δ‖x‖² per image (δ = 0: the minimum-norm least-squares solution A⁺y), float64."""
    if delta == 0:
        return (torch.linalg.pinv(a) @ y[..., None])[..., 0]
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    return torch.linalg.solve(a.mT @ a + delta * eye, (a.mT @ y[..., None]))[..., 0]


@ops
@params
def test_pinv_reproduces_measurement(name, shape):
    """A(A⁺y) = y to 1e-4 relative for every operator (all have full row rank), y = A x for a random x.

    Inpainting, identity and SR have an exact A⁺ (A A⁺ = I). The blur is square but badly conditioned, so
    its A⁺ is Tikhonov-regularised: along a singular direction with value σ the residual of y = A x is
    y · δ / (σ² + δ). The test therefore takes δ = 1e-12 σ_max², far below the smallest σ² of these
    kernels on these sizes (≈ 1e-7: σ_min ≈ 0.018 per 1-D factor at 8 px), so A A⁺ = I to ~1e-5. It takes
    y = A x, not a random y: the operator blurs with the float32-rounded kernel while A⁺ inverts the
    float64 kernel, and a random y would put O(1) weight on directions that A⁺ amplifies by 1/σ_min², turning
    that rounding into O(1) errors; y = A x has only O(σ) weight there.
    """
    op = make_op(name, shape)
    x = rand(B, *shape, seed=7)
    y = op(x)
    xp = op.pinv(y, shape, delta=1e-12) if name == "blur" else op.pinv(y, shape)
    assert xp.shape == x.shape and xp.dtype == y.dtype
    rel = (op(xp) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)
    assert (rel < (1e-4 if name == "blur" else 1e-12)).all(), rel
    if name in ("down2-area", "down4-area"):  # A⁺ is the minimum-norm solution: nearest upsampling
        f = int(name[4])
        up = torch.nn.functional.interpolate(y, scale_factor=f, mode="nearest")
        torch.testing.assert_close(xp, up, rtol=1e-12, atol=1e-12)


@ops
@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 8, 12)], ids=["1x8x8", "2x8x12"])
def test_pinv_is_the_dense_regularised_lstsq_solution(name, shape):
    """A⁺y against argmin ‖Ax − y‖² + δ‖x‖² solved densely in float64 for a random y (not in the range of
    A for inpainting): δ = delta · ‖A‖₂² for the blur (default delta = 1e-4 and a small one), δ → 0 (the
    Moore–Penrose solution) for the others. The blur's dense A is built by its conv2d forward map with
    the kernel in float64 (the operator's buffer is float32-rounded; A⁺ inverts the exact kernel)."""
    op = make_op(name, shape)
    if name == "blur":
        r = torch.arange(5, dtype=torch.float64) - 2
        g = torch.exp(-r ** 2 / (2 * 1.5 ** 2))
        op.kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    a = dense_matrix(op, shape)
    y = rand(B, *expected_out_shape(name, shape), seed=10)
    for delta in ((1e-4, 1e-8) if name == "blur" else (0.0,)):
        xp = op.pinv(y, shape, delta=delta) if name == "blur" else op.pinv(y, shape)
        scale = float(torch.linalg.matrix_norm(a[0], ord=2)) ** 2 if name == "blur" else 0.0
        ref = dense_regularised_lstsq(a, y.flatten(1), delta * scale)
        err = (xp.flatten(1) - ref).norm(dim=1) / ref.norm(dim=1)
        assert (err < (1e-7 if name == "blur" else 1e-12)).all(), err


def test_blur_pinv_default_delta_is_relative_and_bounded():
    """Default δ = 1e-4 σ_max(A)²: the Tikhonov bound ‖A A⁺ A x − A x‖ ≤ (√δ / 2) ‖x‖ holds per image
    (each singular direction's residual is σ c δ / (σ² + δ) ≤ c √δ / 2), and the residual is not 0."""
    shape = (3, 16, 16)
    op = make_op("blur", shape)
    x = rand(B, *shape, seed=11)
    y = op(x)
    xp = op.pinv(y, shape)
    delta = 1e-4 * float(torch.linalg.matrix_norm(dense_matrix(op, shape)[0], ord=2)) ** 2
    res = (op(xp) - y).flatten(1).norm(dim=1)
    assert (res <= 0.5 * delta ** 0.5 * x.flatten(1).norm(dim=1)).all()
    assert (res > 1e-6 * y.flatten(1).norm(dim=1)).all()    # the default does regularise (not a no-op)


def test_reflect_correlation_matrix_is_the_blur():
    """The separable 1-D matrices reproduce the 2-D reflect-padded blur: A x = K_h X K_wᵀ per channel."""
    op = GaussianBlur(kernel_size=7, sigma=1.5)
    x = rand(B, 2, 8, 12, seed=12)
    k1 = gaussian_kernel_1d(7, 1.5)
    torch.testing.assert_close(reflect_correlation_matrix(8, k1) @ x @ reflect_correlation_matrix(12, k1).T, op(x),
                               rtol=1e-6, atol=1e-7)   # the forward map uses the float32-rounded 2-D kernel


@pytest.mark.parametrize("name", ["blur", "down2-bicubic"])
def test_pinv_batched_dtypes_and_cache(name):
    """A⁺ broadcasts over a leading sample dim, keeps the input's dtype, and caches per dtype / size."""
    shape = (3, 8, 8)
    op = make_op(name, shape)
    y = op(rand(3, B, *shape, seed=13))
    xp = op.pinv(y, shape)
    assert xp.shape == (3, B, *shape) and xp.dtype == torch.float64
    for i in range(3):
        torch.testing.assert_close(xp[i], op.pinv(y[i], shape), rtol=0, atol=1e-12)
    x32 = op.pinv(y.float(), shape)
    assert x32.dtype == torch.float32
    torch.testing.assert_close(x32.double(), xp, rtol=1e-4, atol=1e-4)
    big = op.pinv(op(rand(B, 3, 16, 16, seed=14)), (3, 16, 16))   # another size: its own factors
    assert big.shape == (B, 3, 16, 16)


def test_base_operator_needs_a_closed_form_pinv():
    class Scale(LinearOperator):
        def forward(self, x):
            return 2 * x

    with pytest.raises(NotImplementedError, match="pseudo-inverse"):
        Scale().pinv(torch.zeros(1, 1, 2, 2), (1, 2, 2))


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
