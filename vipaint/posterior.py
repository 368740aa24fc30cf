"""The hierarchical variational posterior q_λ over keypoint latents (docs/algorithm.md §2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vipaint.diffusion import ddim_mean, ddim_sigma, gaussian_kl, tweedie_x0
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["HierarchicalPosterior", "ChainSample", "sample_chain"]

_MAX_TOP_LOGVAR = math.log(1.0 - 1e-4)   # keeps τ² < 1 so √(1 − τ²) stays real


@dataclass
class ChainSample:
    """One pass down the keypoint chain for S samples × B images."""

    z: list[Tensor]          # z_{h_k}, each [S, B, *latent]
    kl: Tensor               # Σ_k KL(q_λ(z_{h_{k+1}}|z_{h_k}) ‖ p_θ(·|z_{h_k})), [S, B] (sum over elements)
    top_logvar: Tensor       # ℓ_1 used for z_{h_1}, [B, *latent]


class HierarchicalPosterior(nn.Module):
    """λ = {μ_k, ℓ_k, γ_k}, k = 1..K, element-wise tensors [K, B, *latent] for B observations.

    q(z_{h_1}) = N(√(1−τ²) μ_1, τ²), τ² = exp ℓ_1; for k ≥ 1
    q(z_{h_{k+1}} | z_{h_k}) = N(w m_θ(z_{h_k}) + (1−w) α_{h_{k+1}} μ_{k+1}, exp ℓ_{k+1}), w = sigmoid γ_{k+1}.
    γ_1 is unused. The module is built per batch inside the predict step, never registered on the
    LightningModule, so λ never crosses ranks.
    """

    def __init__(self, mu: Tensor, logvar: Tensor, gamma: Tensor, keypoints: list[int]) -> None:
        super().__init__()
        if list(keypoints) != sorted(keypoints, reverse=True) or len(set(keypoints)) != len(keypoints):
            raise ValueError(f"keypoints must be strictly decreasing (T_e > ... > T_s), got {keypoints}")
        if not (mu.shape == logvar.shape == gamma.shape and mu.shape[0] == len(keypoints)):
            raise ValueError("mu, logvar, gamma must share the shape [K, B, *latent] with K = len(keypoints)")
        self.keypoints = [int(k) for k in keypoints]
        self.mu = nn.Parameter(mu)
        self.logvar = nn.Parameter(logvar)
        self.gamma = nn.Parameter(gamma)

    @classmethod
    def initialise(cls, y_enc: Tensor, prior: Prior, keypoints: list[int], rng: ImageRNG, *,
                   s_top: float = 0.8, gamma_init: float = 5.0, std_scale: float = 0.7) -> HierarchicalPosterior:
        """Official initialisation (docs/algorithm.md §2): ℓ_1 = 2 log σ_{T_e}; std_k = 0.7 × DDPM posterior std
        between h_{k−1} and h_k; μ_1 = y_enc + s_top ε; μ_k = y_enc + (σ_{h_k}/α_{h_k}) ε; γ_k = 5."""
        k, shape = len(keypoints), tuple(y_enc.shape[1:])
        ab = prior.alpha_bar(torch.tensor(keypoints)).to(y_enc)
        mu = torch.empty((k,) + tuple(y_enc.shape), device=y_enc.device)
        logvar = torch.empty_like(mu)
        mu[0] = y_enc + s_top * rng.randn(*shape).to(y_enc)
        logvar[0] = torch.log(1 - ab[0]).clamp(max=_MAX_TOP_LOGVAR)
        for i in range(1, k):
            mu[i] = y_enc + ((1 - ab[i]) / ab[i]).sqrt() * rng.randn(*shape).to(y_enc)
            std = std_scale * ddim_sigma(ab[i - 1], ab[i], 1.0)
            logvar[i] = 2 * torch.log(std)
        gamma = torch.full_like(mu, float(gamma_init))
        return cls(mu, logvar, gamma, keypoints)

    def param_groups(self, lr_mu: float, lr_logvar: float, lr_gamma: float) -> list[dict]:
        """Adam parameter groups with the official per-group learning rates (docs/algorithm.md §3)."""
        return [{"params": [self.mu], "lr": lr_mu}, {"params": [self.logvar], "lr": lr_logvar},
                {"params": [self.gamma], "lr": lr_gamma}]

    def top_logvar(self) -> Tensor:
        return self.logvar[0].clamp(max=_MAX_TOP_LOGVAR)

    def sample_top(self, noise: Tensor) -> Tensor:
        """z_{h_1} = √(1−τ²) μ_1 + τ ε for noise [S, B, *latent]."""
        lv = self.top_logvar()
        return (1 - lv.exp()).sqrt() * self.mu[0] + (0.5 * lv).exp() * noise


def sample_chain(post: HierarchicalPosterior, prior: Prior, n: int, rng: ImageRNG, *, eta: float,
                 cond: Tensor | None = None, guidance_scale: float = 1.0) -> ChainSample:
    """Draw z_{h_1}, …, z_{h_K} ~ q_λ for n samples per image, with the hierarchical KL
    (docs/algorithm.md §2 transitions, §3b)."""
    latent = tuple(post.mu.shape[2:])
    z_top = post.sample_top(rng.randn(n, *latent, batch_dim=1).to(post.mu))
    return chain_from(post, prior, z_top, rng, eta=eta, cond=cond, guidance_scale=guidance_scale)


def chain_from(post: HierarchicalPosterior, prior: Prior, z_top: Tensor, rng: ImageRNG, *, eta: float,
               cond: Tensor | None = None, guidance_scale: float = 1.0,
               eps_top: Tensor | None = None) -> ChainSample:
    """Continue the chain from z_{h_1} = z_top [S, B, *latent]. `eps_top`, if given, is ε_θ(z_top, h_1)
    already computed by the caller (so the prior-loss pass can share one network call)."""
    zs = [z_top]
    s, b = z_top.shape[:2]
    latent = tuple(zs[0].shape[2:])
    kl = zs[0].new_zeros(s, b)
    abs_ = prior.alpha_bar(torch.tensor(post.keypoints)).to(zs[0])
    for k in range(len(post.keypoints) - 1):
        z = zs[-1]
        e = eps_top if k == 0 and eps_top is not None else prior.eps(z, post.keypoints[k], cond, guidance_scale)
        x0 = tweedie_x0(z, e, abs_[k])
        sig = ddim_sigma(abs_[k], abs_[k + 1], eta)
        m_p = ddim_mean(x0, e, abs_[k + 1], sig)
        w = torch.sigmoid(post.gamma[k + 1])
        m_q = w * m_p + (1 - w) * abs_[k + 1].sqrt() * post.mu[k + 1]
        v_q = post.logvar[k + 1].exp().expand_as(m_q)
        kl = kl + gaussian_kl(m_q, v_q, m_p, sig ** 2).flatten(2).sum(-1)
        zs.append(m_q + v_q.sqrt() * rng.randn(s, *latent, batch_dim=1).to(z))
    return ChainSample(z=zs, kl=kl, top_logvar=post.top_logvar())
