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

__all__ = ["LinearOperator", "Inpainting", "GaussianBlur", "Downsample", "Identity", "operator_matrix"]


def _flat(x: Tensor, fn, *, tail: int = 3) -> Tensor:
    """Apply an image op `fn` on [N, C, H, W] to a tensor with arbitrary leading dims."""
    lead = x.shape[:-tail]
    y = fn(x.reshape((-1,) + x.shape[-tail:]))
    return y.reshape(lead + y.shape[1:])


class LinearOperator(nn.Module):
    """A linear forward map A with Gaussian noise of std `sigma_y`.

    Subclasses implement `forward`; `adjoint` defaults to an exact vector-Jacobian product and
    `pinv` to a regularised conjugate-gradient solve of (AᵀA + δI) x = Aᵀy, both overridden where a
    closed form exists.
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

    def pinv(self, y: Tensor, image_shape: tuple[int, int, int], *, delta: float = 1e-4,
             iters: int = 100) -> Tensor:
        """A⁺y ≈ argmin ‖Ax − y‖² + δ‖x‖², by conjugate gradients (batched, per image)."""
        b = self.adjoint(y, image_shape)
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        dims = tuple(range(-3, 0))
        rs = (r * r).sum(dims, keepdim=True)
        for _ in range(iters):
            ap = self.adjoint(self.forward(p), image_shape) + delta * p
            alpha = rs / (p * ap).sum(dims, keepdim=True).clamp_min(1e-30)
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = (r * r).sum(dims, keepdim=True)
            if float(rs_new.max()) < 1e-20:
                break
            p = r + rs_new / rs.clamp_min(1e-30) * p
            rs = rs_new
        return x

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

    def _blur(self, x: Tensor) -> Tensor:
        c, pad = x.shape[1], self.kernel_size // 2
        if pad >= min(x.shape[-2:]):
            raise ValueError(f"blur kernel {self.kernel_size} too large for images of size "
                             f"{tuple(x.shape[-2:])}: reflect padding needs kernel_size // 2 < image side")
        w = self.kernel.to(x)[None, None].expand(c, 1, -1, -1)
        return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), w, groups=c)

    def forward(self, x: Tensor) -> Tensor:
        return _flat(x, self._blur)


class Downsample(LinearOperator):
    """Super-resolution operator: ×`factor` downsampling by area averaging (exact Aᵀ, A⁺) or
    antialiased bicubic interpolation (adjoint by VJP, A⁺ by conjugate gradients)."""

    name = "sr"

    def __init__(self, *, factor: int = 4, mode: str = "area", sigma_y: float = 0.05) -> None:
        super().__init__(sigma_y=sigma_y)
        if factor < 1 or int(factor) != factor:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        if mode not in ("area", "bicubic"):
            raise ValueError(f"mode must be 'area' or 'bicubic', got {mode!r}")
        self.factor, self.mode = int(factor), mode

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

    def pinv(self, y: Tensor, image_shape: tuple[int, int, int], **kw: float) -> Tensor:
        if self.mode == "area":  # A Aᵀ = I / f², so A⁺ = f² Aᵀ = nearest upsampling
            return self.adjoint(y, image_shape) * self.factor ** 2
        return super().pinv(y, image_shape, **kw)


def operator_matrix(op: LinearOperator, image_shape: tuple[int, int, int]) -> Tensor:
    """Dense matrices A_b [B, P, D] of a linear operator for each image (small images only)."""
    d = math.prod(image_shape)
    b = op.batch_size or 1
    basis = torch.eye(d, device=op._device()).reshape((d, 1) + tuple(image_shape)).expand(d, b, *image_shape)
    out = op.forward(basis).reshape(d, b, -1)          # [D, B, P]
    return out.permute(1, 2, 0).contiguous()           # [B, P, D]
