"""The prior interface every method talks to: a frozen ε-prediction network on latents z, its ᾱ
schedule, and a codec between latents and pixel images (identity for pixel priors).

`eps`, `encode` and `decode` take any number of leading dimensions ([N, ...], [S, B, ...], ...): the base
class flattens them into one batch, makes ONE call of the subclass's flat method (`eps_flat`,
`encode_flat`, `decode_flat`) and restores them."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

__all__ = ["Prior"]


class Prior(nn.Module, ABC):
    """A frozen diffusion prior (docs/algorithm.md §1).

    Subclasses register a float64 buffer `alphas_cumprod` of length T (ᾱ_t, t = 0..T−1) and implement
    `eps_flat`. Latent priors also override `encode_flat` / `decode_flat`; pixel priors keep the identity
    codec.

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

    def eps(self, z: Tensor, t: Tensor | int, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        """Noise prediction ε_θ(z_t, t, c) for z of shape [*lead, *latent_shape], in one `eps_flat` call on
        the flattened batch [prod(lead), *latent_shape]; returns [*lead, *latent_shape].

        `t`: an int or a long tensor broadcastable to `lead`. `cond`: None, or class labels whose shape is
        the last dims of `lead` (e.g. [B] for z [S, B, ...]), tiled over the others (on the flattened axis
        label b is repeated every B entries, like `cond.repeat(S)`). `guidance_scale` g applies
        classifier-free guidance ε_u + g(ε_c − ε_u) where the prior supports it. Gradients flow to `z`; the
        network's own weights are frozen.
        """
        lead = self._lead(z, len(self.latent_shape))
        tt, c = _flat_times(t, lead, z.device), _flat_cond(cond, lead)
        if len(lead) == 1:      # already flat: no reshape, so the autograd graph is the flat call's own
            return self.eps_flat(z, tt, c, guidance_scale)
        flat = z.reshape((math.prod(lead),) + tuple(z.shape[len(lead):]))
        return self.eps_flat(flat, tt, c, guidance_scale).reshape(z.shape)

    @abstractmethod
    def eps_flat(self, z: Tensor, t: Tensor, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        """`eps` on one flat batch: z [N, *latent_shape], t [N] long on z's device, cond [N] or None."""

    # -- codec -----------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Pixel images [*lead, *image_shape] in [−1, 1] → latents [*lead, *latent_shape], in one
        `encode_flat` call on the flattened batch; pixel priors (`is_latent` False) return `x` itself."""
        if not self.is_latent:  # pixel priors: the input itself, no view (the old helpers' autograd graph)
            return x
        lead = self._lead(x, len(self.image_shape))
        if len(lead) == 1:
            return self.encode_flat(x)
        z = self.encode_flat(x.reshape((math.prod(lead),) + tuple(x.shape[len(lead):])))
        return z.reshape(lead + tuple(z.shape[1:]))

    def decode(self, z: Tensor) -> Tensor:
        """Latents [*lead, *latent_shape] → pixel images [*lead, *image_shape] in [−1, 1], differentiable, in
        one `decode_flat` call on the flattened batch; pixel priors (`is_latent` False) return `z` itself."""
        if not self.is_latent:
            return z
        lead = self._lead(z, len(self.latent_shape))
        if len(lead) == 1:
            return self.decode_flat(z)
        x = self.decode_flat(z.reshape((math.prod(lead),) + tuple(z.shape[len(lead):])))
        return x.reshape(lead + tuple(x.shape[1:]))

    def encode_flat(self, x: Tensor) -> Tensor:
        """`encode` on one flat batch [N, *image_shape] (identity for pixel priors)."""
        return x

    def decode_flat(self, z: Tensor) -> Tensor:
        """`decode` on one flat batch [N, *latent_shape] (identity for pixel priors)."""
        return z

    @staticmethod
    def _lead(x: Tensor, event_dims: int) -> tuple[int, ...]:
        if x.dim() < event_dims:
            raise ValueError(f"expected a tensor with at least {event_dims} dims [*lead, C, H, W], "
                             f"got shape {tuple(x.shape)}")
        return tuple(x.shape[:x.dim() - event_dims])

    def extra_repr(self) -> str:
        return f"T={self.num_timesteps}, latent_shape={self.latent_shape}, image_shape={self.image_shape}"


def _flat_times(t: Tensor | int, lead: tuple[int, ...], device: torch.device) -> Tensor:
    """t (an int or a tensor broadcastable to `lead`) → long tensor [prod(lead)] on `device`."""
    n = math.prod(lead)
    if not isinstance(t, Tensor):
        return torch.full((n,), int(t), device=device, dtype=torch.long)
    t = t.to(device=device, dtype=torch.long)
    if tuple(t.shape) == lead:
        return t.reshape(n)
    try:
        return t.expand(lead).reshape(n).contiguous()
    except RuntimeError as err:
        raise ValueError(f"t of shape {tuple(t.shape)} does not broadcast to the leading dims {lead}") from err


def _flat_cond(cond: Tensor | None, lead: tuple[int, ...]) -> Tensor | None:
    """Labels shaped like the last dims of `lead` → [prod(lead)], tiled over the first dims."""
    if cond is None:
        return None
    k = cond.dim()
    if k > len(lead) or tuple(cond.shape) != lead[len(lead) - k:]:
        raise ValueError(f"cond of shape {tuple(cond.shape)} must match the last leading dims of z {lead}")
    return cond.expand(lead).reshape(math.prod(lead)).contiguous()
