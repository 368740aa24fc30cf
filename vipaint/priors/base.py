"""The prior interface every method talks to: a frozen ε-prediction network on latents z, its ᾱ
schedule, and a codec between latents and pixel images (identity for pixel priors).

Gaussian paths (docs/algorithm.md §11): a prior on any path x_t = α_t x0 + σ_t ε (`noise_path` "vp" or "flow")
stores the VP-equivalent ᾱ'_t = α_t²/(α_t²+σ_t²) as `alphas_cumprod` and works in VP coordinates
z_t = x_t/√(α_t²+σ_t²), so every method runs unchanged; `path_alpha`, `path_sigma`, `model_time`, `sigma_of`
and `time_of_sigma` expose the path itself.

`eps`, `encode` and `decode` take any number of leading dimensions ([N, ...], [S, B, ...], ...): the base
class flattens them into one batch, makes ONE call of the subclass's flat method (`eps_flat`,
`encode_flat`, `decode_flat`) and restores them."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from vipaint.diffusion import bcast
from vipaint.priors.paths import PATHS, eps_x0_from_output, path_scale, rf_noise_level, vp_equivalent_abar

__all__ = ["Prior"]


class Prior(nn.Module, ABC):
    """A frozen diffusion prior (docs/algorithm.md §1).

    Subclasses register a float64 buffer `alphas_cumprod` of length T (ᾱ_t, t = 0..T−1) and implement
    `eps_flat`. Latent priors also override `encode_flat` / `decode_flat`; pixel priors keep the identity
    codec.

    Shapes: `latent_shape` and `image_shape` are (C, H, W) without the batch dimension.
    """

    alphas_cumprod: Tensor
    #: "vp" (α = √ᾱ, σ = √(1−ᾱ)) or "flow" (rectified flow α = 1 − σ); set by `set_path`
    noise_path: str = "vp"

    def __init__(self) -> None:
        super().__init__()

    # -- Gaussian path (docs/algorithm.md §11) ---------------------------------------------------
    def set_path(self, noise_path: str, alphas: Tensor, sigmas: Tensor, model_times: Tensor | None = None) -> None:
        """Put the prior on the path x_t = α_t x0 + σ_t ε (docs/algorithm.md §11.1): registers float64 buffers
        `path_alphas`, `path_sigmas`, the network's timestep values `model_times` (default: the indices t) and
        `alphas_cumprod` = the VP-equivalent ᾱ' = α²/(α²+σ²), which must lie in (0, 1]."""
        if noise_path not in PATHS:
            raise ValueError(f"unknown noise path {noise_path!r}; use one of {PATHS}")
        alphas, sigmas = alphas.double().clone(), sigmas.double().clone()
        abar = vp_equivalent_abar(alphas, sigmas)
        if not bool(((abar > 0) & (abar <= 1)).all()):
            raise ValueError("every VP-equivalent ᾱ' = α²/(α²+σ²) must lie in (0, 1]; cap σ at the noisy end "
                             "(vipaint.priors.paths.cap_flow_sigmas)")
        if model_times is None:
            model_times = torch.arange(len(alphas), dtype=torch.float64)
        self.noise_path = noise_path
        old = self._buffers.get("alphas_cumprod")
        device = old.device if old is not None else alphas.device
        for name, value in (("path_alphas", alphas), ("path_sigmas", sigmas),
                            ("model_times", model_times.double().clone()), ("alphas_cumprod", abar)):
            self.register_buffer(name, value.to(device))

    def _has_path(self) -> bool:
        return "path_alphas" in self._buffers

    def path_alpha(self, t: Tensor | int) -> Tensor:
        """α_t of the prior's path (VP: √ᾱ_t), float32, shaped like `t`."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device, dtype=torch.long)
        if self._has_path():
            return self.path_alphas[t].float()
        return self.alphas_cumprod[t].sqrt().float()

    def path_sigma(self, t: Tensor | int) -> Tensor:
        """σ_t of the prior's path (VP: √(1−ᾱ_t)), float32, shaped like `t`."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device, dtype=torch.long)
        if self._has_path():
            return self.path_sigmas[t].float()
        return (1 - self.alphas_cumprod[t]).sqrt().float()

    def model_time(self, t: Tensor | int) -> Tensor:
        """The timestep value fed to the network at index t: t itself on a VP prior, σ_t·N on a diffusers
        flow prior (as diffusers' SD3 pipeline feeds it); long without path buffers, float32 with them."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device, dtype=torch.long)
        if self._has_path():
            return self.model_times[t].float()
        return t

    def network_input(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(x, model time) for VP coordinates z [N, ...] at indices t [N] (docs/algorithm.md §11.1): the path state
        x = √(α_t²+σ_t²)·z and `model_time(t)`; (z, t) on a prior without path buffers."""
        if not self._has_path():
            return z, t
        a, s = self.path_alpha(t).to(z), self.path_sigma(t).to(z)
        return z * bcast(path_scale(a, s), z), self.model_time(t)

    def eps_from_network(self, out: Tensor, x: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        """ε from a raw network output [N, C, ...] at the path state x = `network_input(z, t)[0]`
        (docs/algorithm.md §11.3); ε is the same in path and VP coordinates."""
        a, s = self.path_alpha(t).to(x), self.path_sigma(t).to(x)
        return eps_x0_from_output(out, x, bcast(a, x), bcast(s, x), prediction_type)[0]

    def sigma_of(self, t: Tensor | int) -> Tensor:
        """The path-invariant noise level of time t, σ_t/(α_t+σ_t) ∈ [0, 1] (docs/algorithm.md §11.4): the
        rectified-flow σ of the same signal-to-noise ratio, equal to the path σ on a flow prior. float64."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device, dtype=torch.long)
        ab = self.alphas_cumprod[t]
        return rf_noise_level(ab.sqrt(), (1 - ab).sqrt())

    def time_of_sigma(self, sigma: float) -> int:
        """The time index whose `sigma_of` is nearest to the noise level `sigma` ∈ [0, 1] (docs/algorithm.md
        §11.4); ties go to the earliest time."""
        if not 0.0 <= float(sigma) <= 1.0:
            raise ValueError(f"a noise level σ/(α+σ) lies in [0, 1], got {sigma}")
        levels = self.sigma_of(torch.arange(self.num_timesteps, device=self.alphas_cumprod.device))
        return int((levels - float(sigma)).abs().argmin())

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
        return (f"T={self.num_timesteps}, path={self.noise_path}, latent_shape={self.latent_shape}, "
                f"image_shape={self.image_shape}")


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
