"""The prior interface every method talks to: a frozen ε-prediction network on latents z, its ᾱ
schedule, and a codec between latents and pixel images (identity for pixel priors)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

__all__ = ["Prior"]


class Prior(nn.Module, ABC):
    """A frozen diffusion prior (ALGORITHM.md §1).

    Subclasses register a float64 buffer `alphas_cumprod` of length T (ᾱ_t, t = 0..T−1) and implement
    `eps`. Latent priors also override `encode` / `decode`; pixel priors keep the identity codec.

    Shapes: `latent_shape` and `image_shape` are (C, H, W) without the batch dimension.
    """

    alphas_cumprod: Tensor

    def __init__(self) -> None:
        super().__init__()

    # -- schedule --------------------------------------------------------------------------------
    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def alpha_bar(self, t: Tensor | int) -> Tensor:
        """ᾱ_t as float32 on the buffer's device; `t` an int or a long tensor of any shape."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device, dtype=torch.long)
        return self.alphas_cumprod[t].float()

    # -- network ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the diffusion variable z."""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of decoded images (pixel priors: equal to `latent_shape`)."""
        return self.latent_shape

    @property
    def is_latent(self) -> bool:
        return False

    @abstractmethod
    def eps(self, z: Tensor, t: Tensor, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        """Noise prediction ε_θ(z_t, t, c) for z of shape [N, *latent_shape] and integer t of shape [N].

        `cond` holds class labels [N] (priors without conditioning ignore it); `guidance_scale` g
        applies classifier-free guidance ε_u + g(ε_c − ε_u) where the prior supports it.
        Gradients flow to `z`; the network's own weights are frozen.
        """

    # -- codec -----------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Pixel images [N, *image_shape] in [−1, 1] → latents (identity for pixel priors)."""
        return x

    def decode(self, z: Tensor) -> Tensor:
        """Latents → pixel images in [−1, 1] (identity for pixel priors); differentiable."""
        return z

    def extra_repr(self) -> str:
        return f"T={self.num_timesteps}, latent_shape={self.latent_shape}, image_shape={self.image_shape}"
