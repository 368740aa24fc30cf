"""Measurement operators y = A(x) + σ_y n (docs/algorithm.md §1, Observation).

Shape convention: operators act on x of shape (..., B, C, H, W); per-image parameters (the inpainting
mask) have a leading batch dimension B and broadcast over any leading sample dimensions, so
`A(samples)` works for samples of shape [S, B, C, H, W] without copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vipaint.seeding import ImageRNG

__all__ = ["LinearOperator", "Inpainting", "GaussianBlur", "Downsample", "Identity", "operator_matrix",
           "gaussian_kernel_1d", "reflect_correlation_matrix", "tikhonov_separable"]


def _flat(x: Tensor, fn, *, tail: int = 3) -> Tensor:
    """Apply an image op `fn` on [N, C, H, W] to a tensor with arbitrary leading dims."""
    lead = x.shape[:-tail]
    y = fn(x.reshape((-1,) + x.shape[-tail:]))
    return y.reshape(lead + y.shape[1:])


class LinearOperator(nn.Module):
    """A linear forward map A with Gaussian noise of std `sigma_y`.

    Subclasses implement `forward` and `pinv` (in closed form: exact up to float rounding); `adjoint`
    defaults to an exact vector-Jacobian product, overridden where a closed form exists.
    """

    def __init__(self, *, sigma_y: float = 0.05) -> None:
        super().__init__()
        if sigma_y < 0:
            raise ValueError(f"sigma_y must be >= 0, got {sigma_y}")
        self.sigma_y = float(sigma_y)

    name = "linear"

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, ...]:
        """Shape of A(x) for one image of `image_shape` (C, H, W)."""
        probe = torch.zeros((self.batch_size or 1,) + tuple(image_shape), device=self._device())
        return tuple(self.forward(probe).shape[1:])

    @property
    def batch_size(self) -> int | None:
        """Number of images the per-image parameters describe (None: any)."""
        return None

    def _device(self) -> torch.device:
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def adjoint(self, y: Tensor, image_shape: tuple[int, int, int]) -> Tensor:
        """Aᵀy by a vector-Jacobian product of the (linear) forward map."""
        x0 = torch.zeros(y.shape[:-len(self.output_shape(image_shape))] + tuple(image_shape),
                         device=y.device, dtype=y.dtype, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.forward(x0), x0, grad_outputs=y)
        return g

    def pinv(self, y: Tensor, image_shape: tuple[int, int, int], *, delta: float = 1e-4) -> Tensor:
        """A⁺y, the (regularised) least-squares solution argmin ‖Ax − y‖² + δ‖x‖², δ = delta · σ_max(A)².

        Every operator implements it in closed form. `delta` only matters where A is badly conditioned
        (the Gaussian blur); the other operators have an exact Moore–Penrose A⁺ (δ → 0) and ignore it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement its pseudo-inverse in closed form")

    def observe(self, x: Tensor, rng: ImageRNG | None = None) -> Tensor:
        """y = A(x) + σ_y n, with n drawn from each image's own stream (x: [B, C, H, W])."""
        y = self.forward(x)
        if self.sigma_y > 0:
            if rng is None:
                raise ValueError("observe() with sigma_y > 0 needs an ImageRNG for the noise")
            y = y + self.sigma_y * self.noise_mask(rng.randn(*y.shape[1:]).to(y))
        return y

    def noise_mask(self, n: Tensor) -> Tensor:
        """Where noise applies (inpainting: observed pixels only)."""
        return n


class Identity(LinearOperator):
    """A = I (denoising)."""

    name = "identity"

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor, image_shape: tuple[int, int, int]) -> Tensor:
        return y

    def pinv(self, y: Tensor, image_shape: tuple[int, int, int], **_: float) -> Tensor:
        return y


class Inpainting(LinearOperator):
    """A(x) = M ⊙ x with a per-image binary mask M [B, 1, H, W] (1 = observed). Holes of y are 0.

    A is an orthogonal projection, so Aᵀ = A⁺ = A.

    Example:
        >>> op = Inpainting(torch.ones(2, 1, 4, 4), sigma_y=0.0)
        >>> op(torch.zeros(3, 2, 1, 4, 4)).shape
        torch.Size([3, 2, 1, 4, 4])
    """

    name = "inpainting"

    def __init__(self, mask: Tensor, *, sigma_y: float = 0.05) -> None:
        super().__init__(sigma_y=sigma_y)
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask must have shape [B, 1, H, W], got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.float())

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.mask * x

    def adjoint(self, y: Tensor, image_shape: tuple[int, int, int] | None = None) -> Tensor:
        return self.mask * y

    def pinv(self, y: Tensor, image_shape: tuple[int, int, int] | None = None, **_: float) -> Tensor:
        return self.mask * y

    def noise_mask(self, n: Tensor) -> Tensor:
        return self.mask * n

    def paste(self, x: Tensor, y: Tensor) -> Tensor:
        """Composite M ⊙ y + (1 − M) ⊙ x (docs/algorithm.md §4 output)."""
        return self.mask * y + (1 - self.mask) * x


def gaussian_kernel(kernel_size: int, sigma: float) -> Tensor:
    """Normalised 2-D Gaussian kernel [k, k]."""
    r = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()


def gaussian_kernel_1d(kernel_size: int, sigma: float) -> Tensor:
    """Normalised 1-D Gaussian kernel [k] in float64; `gaussian_kernel` is its outer product with itself."""
    r = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def reflect_correlation_matrix(n: int, kernel_1d: Tensor) -> Tensor:
    """Dense [n, n] matrix K of a 1-D correlation with an odd kernel k under reflect padding.

    (K x)_i = Σ_t k_t x_r(i + t − p), p = len(k) // 2, with r(j) = −j for j < 0 and 2(n − 1) − j for
    j > n − 1 (`F.pad(mode="reflect")`; needs p < n). Entries add up where two taps reflect onto one pixel.
    """
    k = kernel_1d.shape[0]
    idx = torch.arange(n)[:, None] + torch.arange(k)[None, :] - k // 2
    idx = torch.where(idx < 0, -idx, idx)
    idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)
    return torch.zeros(n, n, dtype=kernel_1d.dtype).scatter_add_(1, idx, kernel_1d.expand(n, k).contiguous())


SVD = tuple[Tensor, Tensor, Tensor]
"""(U, s, V) of a matrix K = U diag(s) Vᵀ, s in decreasing order."""


def tikhonov_separable(y: Tensor, svd_h: SVD, svd_w: SVD, delta: float) -> Tensor:
    """x = (AᵀA + δI)⁻¹ Aᵀ y for A = K_h ⊗ K_w acting on the last two dims of y (X ↦ K_h X K_wᵀ).

    With K = U diag(s) Vᵀ, A = (U_h ⊗ U_w)(S_h ⊗ S_w)(V_h ⊗ V_w)ᵀ, so
    X = V_h [(U_hᵀ Y U_w) ⊙ σ / (σ² + δ)] V_wᵀ with σ = s_h s_wᵀ (δ absolute here).
    """
    (u_h, s_h, v_h), (u_w, s_w, v_w) = svd_h, svd_w
    sigma = s_h[:, None] * s_w[None, :]
    return v_h @ ((u_h.mT @ y @ u_w) * (sigma / (sigma.square() + delta))) @ v_w.mT


class GaussianBlur(LinearOperator):
    """A(x) = k ∗ x with a Gaussian kernel (paper: 61×61, σ = 3 at 256²), reflect padding, per channel."""

    name = "blur"

    def __init__(self, *, kernel_size: int = 61, sigma: float = 3.0, sigma_y: float = 0.05) -> None:
        super().__init__(sigma_y=sigma_y)
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        if sigma <= 0:
            raise ValueError(f"blur sigma must be > 0, got {sigma}")
        self.kernel_size, self.sigma = kernel_size, float(sigma)
        self.register_buffer("kernel", gaussian_kernel(kernel_size, sigma))
        self._svd_cache: dict[tuple, tuple[SVD, SVD, float]] = {}

    def _check_size(self, size: tuple[int, ...]) -> None:
        if self.kernel_size // 2 >= min(size):
            raise ValueError(f"blur kernel {self.kernel_size} too large for images of size "
                             f"{tuple(size)}: reflect padding needs kernel_size // 2 < image side")

    def _blur(self, x: Tensor) -> Tensor:
        c, pad = x.shape[1], self.kernel_size // 2
        self._check_size(x.shape[-2:])
        w = self.kernel.to(x)[None, None].expand(c, 1, -1, -1)
        return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), w, groups=c)

    def forward(self, x: Tensor) -> Tensor:
        return _flat(x, self._blur)

    def _svds(self, h: int, w: int, like: Tensor) -> tuple[SVD, SVD, float]:
        """SVDs of the 1-D blur matrices K_h, K_w and σ_max(A)² = (σ_max(K_h) σ_max(K_w))².

        Computed in float64 on the CPU, cached per size, device and dtype.
        """
        key = (h, w, like.device, like.dtype)
        if key not in self._svd_cache:
            k1 = gaussian_kernel_1d(self.kernel_size, self.sigma)
            svds = [torch.linalg.svd(reflect_correlation_matrix(n, k1)) for n in (h, w)]
            svd_h, svd_w = ((u.to(like), s.to(like), vh.mT.to(like)) for u, s, vh in svds)
            self._svd_cache[key] = (svd_h, svd_w, float(svds[0].S[0] * svds[1].S[0]) ** 2)
        return self._svd_cache[key]

    def pinv(self, y: Tensor, image_shape: tuple[int, int, int] | None = None, *,
             delta: float = 1e-4) -> Tensor:
        """A⁺y = (AᵀA + δI)⁻¹ Aᵀ y with δ = delta · σ_max(A)², exactly (`tikhonov_separable`).

        Reflect padding makes A non-circulant (no FFT diagonalisation), but the kernel is separable, so
        A = K_h ⊗ K_w per channel, with the SVDs of the small 1-D matrices (`reflect_correlation_matrix`)
        and σ_max(A) = σ_max(K_h) σ_max(K_w) (≈ 1: the kernel is normalised). A is square but badly
        conditioned (numerically singular for the paper's 61×61, σ = 3 kernel at 256²), hence δ > 0:
        directions with σ² ≫ δ are inverted exactly, those with σ² ≪ δ are damped, and ‖A⁺y‖ ≤ ‖y‖ / (2√δ)
        (δ is relative, so the same `delta` means the same damping whatever the kernel's gain).
        `image_shape` is not needed (A keeps the size).
        """
        self._check_size(y.shape[-2:])
        svd_h, svd_w, s_max2 = self._svds(y.shape[-2], y.shape[-1], y)
        return tikhonov_separable(y, svd_h, svd_w, float(delta) * s_max2)


class Downsample(LinearOperator):
    """Super-resolution operator: ×`factor` downsampling by area averaging or antialiased bicubic
    interpolation. Both have full row rank, so A⁺ is the exact Moore–Penrose pseudo-inverse, A A⁺ = I
    (area: nearest upsampling; bicubic: the pseudo-inverses of its separable 1-D matrices)."""

    name = "sr"

    def __init__(self, *, factor: int = 4, mode: str = "area", sigma_y: float = 0.05) -> None:
        super().__init__(sigma_y=sigma_y)
        if factor < 1 or int(factor) != factor:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        if mode not in ("area", "bicubic"):
            raise ValueError(f"mode must be 'area' or 'bicubic', got {mode!r}")
        self.factor, self.mode = int(factor), mode
        self._pinv_cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _down(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {(h, w)} is not divisible by the SR factor {self.factor}")
        if self.mode == "area":
            return F.avg_pool2d(x, self.factor)
        return F.interpolate(x, size=(h // self.factor, w // self.factor), mode="bicubic",
                             align_corners=False, antialias=True)

    def forward(self, x: Tensor) -> Tensor:
        return _flat(x, self._down)

    def adjoint(self, y: Tensor, image_shape: tuple[int, int, int]) -> Tensor:
        if self.mode == "area":
            up = lambda v: F.interpolate(v, scale_factor=self.factor, mode="nearest")  # noqa: E731
            return _flat(y, up) / self.factor ** 2
        return super().adjoint(y, image_shape)

    def bicubic_matrix(self, n: int) -> Tensor:
        """The 1-D bicubic downsampling matrix D [n / factor, n] in float64; A = D_h ⊗ D_w.

        Read off the forward map (PyTorch applies the antialiased filter separably) on basis images of
        width 2·factor: with an output side of 1 PyTorch returns wrong values along the other axis.
        """
        basis = torch.eye(n, dtype=torch.float64)[:, None, :, None].expand(n, 1, n, 2 * self.factor)
        return self._down(basis.contiguous())[:, 0, :, 0].T

    def _bicubic_pinvs(self, h: int, w: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(D_h⁺, D_w⁺), computed in float64 on the CPU and cached per size, device and dtype."""
        key = (h, w, like.device, like.dtype)
        if key not in self._pinv_cache:
            self._pinv_cache[key] = tuple(torch.linalg.pinv(self.bicubic_matrix(n)).to(like) for n in (h, w))
        return self._pinv_cache[key]

    def pinv(self, y: Tensor, image_shape: tuple[int, int, int], **_: float) -> Tensor:
        """Exact A⁺y (any `delta` is ignored: A A⁺ = I)."""
        if self.mode == "area":  # A Aᵀ = I / f², so A⁺ = f² Aᵀ = nearest upsampling
            return self.adjoint(y, image_shape) * self.factor ** 2
        p_h, p_w = self._bicubic_pinvs(image_shape[-2], image_shape[-1], y)
        return p_h @ y @ p_w.mT  # (D_h ⊗ D_w)⁺ = D_h⁺ ⊗ D_w⁺


def operator_matrix(op: LinearOperator, image_shape: tuple[int, int, int]) -> Tensor:
    """Dense matrices A_b [B, P, D] of a linear operator for each image (small images only)."""
    d = math.prod(image_shape)
    b = op.batch_size or 1
    basis = torch.eye(d, device=op._device()).reshape((d, 1) + tuple(image_shape)).expand(d, b, *image_shape)
    out = op.forward(basis).reshape(d, b, -1)          # [D, B, P]
    return out.permute(1, 2, 0).contiguous()           # [B, P, D]
