"""Analytic priors with exact scores (docs/algorithm.md §8): a Gaussian mixture Σ_j w_j N(m_j, Σ_j) over
small images. The VP marginals p(z_t) = Σ_j w_j N(α_t m_j, α_t² Σ_j + σ_t² I) are closed form, so the
exact ε*(z_t, t) = −σ_t ∇ log p(z_t) serves as a drop-in prior, and linear-Gaussian observations have an
exact mixture posterior. On a rectified-flow path (`noise_path="flow"`, docs/algorithm.md §11) the same formulas
run on the VP-equivalent schedule ᾱ', which makes ε* exact for that path too (ε is shared by both coordinates)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vipaint.operators import LinearOperator, operator_matrix
from vipaint.priors.base import Prior
from vipaint.priors.paths import cap_flow_sigmas, flow_sigmas
from vipaint.priors.schedules import make_alphas_cumprod

__all__ = ["GaussianMixturePrior", "GaussianPrior", "SyntheticMixturePrior", "GaussianMixture",
           "smooth_covariance"]


@dataclass
class GaussianMixture:
    """A batch of Gaussian mixtures over flattened images: weights [B, J], means [B, J, D],
    covs [B, J, D, D] (float64)."""

    weights: Tensor
    means: Tensor
    covs: Tensor

    def mean(self) -> Tensor:
        """Mixture mean [B, D]."""
        return (self.weights[..., None] * self.means).sum(1)

    def covariance(self) -> Tensor:
        """Mixture covariance [B, D, D] (law of total covariance)."""
        m = self.mean()
        dm = self.means - m[:, None]
        outer = dm[..., :, None] * dm[..., None, :]
        return (self.weights[..., None, None] * (self.covs + outer)).sum(1)

    def std(self) -> Tensor:
        """Per-coordinate marginal std [B, D]."""
        return self.covariance().diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()

    def sample(self, n: int, generators: list[torch.Generator]) -> Tensor:
        """n samples per mixture, [n, B, D], image b drawn from `generators[b]`."""
        out = []
        chol = torch.linalg.cholesky(self.covs + 1e-10 * torch.eye(self.covs.shape[-1], dtype=self.covs.dtype))
        for b, g in enumerate(generators):
            comp = torch.multinomial(self.weights[b].cpu().float(), n, replacement=True, generator=g)
            z = torch.randn(n, self.means.shape[-1], generator=g, dtype=torch.float64).to(self.means.device)
            out.append(self.means[b, comp] + (chol[b, comp] @ z[..., None])[..., 0])
        return torch.stack(out, dim=1)


def smooth_covariance(image_shape: tuple[int, int, int], *, length_scale: float = 2.0,
                      variance: float = 0.25, jitter: float = 1e-3) -> Tensor:
    """Squared-exponential covariance over the pixel grid (channels independent), [D, D] float64."""
    c, h, w = image_shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    p = torch.stack([yy.flatten(), xx.flatten()], 1)
    d2 = ((p[:, None] - p[None]) ** 2).sum(-1)
    k = variance * torch.exp(-d2 / (2 * length_scale ** 2)) + jitter * torch.eye(h * w, dtype=torch.float64)
    return torch.block_diag(*([k] * c))


class GaussianMixturePrior(Prior):
    """Exact-score prior Σ_j w_j N(m_j, Σ_j) on images of `image_shape` (docs/algorithm.md §8).

    Args:
        weights: [J] mixture weights (normalised here).
        means: [J, D] or [J, C, H, W] component means.
        covs: [J, D, D] component covariances.
        image_shape: (C, H, W); inferred from 4-D means.
        num_timesteps, beta_schedule, beta_start, beta_end: the VP schedule (docs/algorithm.md §1).
        noise_path: "vp" (the schedule above) or "flow": rectified flow x_t = (1−σ_t) x0 + σ_t ε on the grid of
            diffusers' `FlowMatchEulerDiscreteScheduler` with `shift` (capped at the noisy end), stored as its
            VP-equivalent ᾱ' (docs/algorithm.md §11.1–§11.2); the beta options are then unused.
        shift: the flow grid's shift (flow only).
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor, *,
                 image_shape: tuple[int, int, int] | None = None, num_timesteps: int = 1000,
                 beta_schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02,
                 noise_path: str = "vp", shift: float = 1.0) -> None:
        super().__init__()
        weights, means, covs = (torch.as_tensor(v, dtype=torch.float64) for v in (weights, means, covs))
        if image_shape is None:
            if means.dim() != 4:
                raise ValueError("give image_shape=(C, H, W) or means of shape [J, C, H, W]")
            image_shape = tuple(means.shape[1:])
        self._shape = tuple(int(s) for s in image_shape)
        d = math.prod(self._shape)
        means = means.reshape(-1, d)
        j = means.shape[0]
        if weights.shape != (j,) or covs.shape != (j, d, d):
            raise ValueError(f"expected weights [{j}], covs [{j}, {d}, {d}]; got {tuple(weights.shape)}, "
                             f"{tuple(covs.shape)}")
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("mixture weights must be non-negative and not all zero")
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        evals, evecs = torch.linalg.eigh(covs)
        if (evals <= 0).any():
            raise ValueError("every covariance must be positive definite")
        self.register_buffer("weights", weights / weights.sum())
        self.register_buffer("means", means)
        self.register_buffer("covs", covs)
        self.register_buffer("evals", evals)
        self.register_buffer("evecs", evecs)
        if noise_path == "flow":
            sig = cap_flow_sigmas(flow_sigmas(num_timesteps, shift))
            self.set_path("flow", 1.0 - sig, sig, sig * num_timesteps)
        elif noise_path == "vp":
            self.register_buffer("alphas_cumprod", make_alphas_cumprod(num_timesteps, beta_schedule,
                                                                       beta_start, beta_end))
        else:
            raise ValueError(f"unknown noise_path {noise_path!r}; use 'vp' or 'flow'")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]

    def marginal_terms(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """log w_j + log N(z; α m_j, α²Σ_j + σ²I) [N, J] and the per-component scores [N, J, D]."""
        zf = z.reshape(z.shape[0], -1).double()
        ab = self.alphas_cumprod[t.long().to(self.alphas_cumprod.device)].to(zf)[:, None, None]  # [N,1,1]
        a, s2 = ab.sqrt(), 1 - ab
        lam = a ** 2 * self.evals[None] + s2                                       # [N, J, D]
        diff = zf[:, None] - a * self.means[None]                                  # [N, J, D]
        proj = torch.einsum("jde,nje->njd", self.evecs.transpose(-1, -2), diff)   # Uᵀ(z − α m)
        quad = (proj ** 2 / lam).sum(-1)
        logn = -0.5 * (quad + lam.log().sum(-1) + zf.shape[1] * math.log(2 * math.pi))
        score = -torch.einsum("jde,nje->njd", self.evecs, proj / lam)
        return self.weights.log()[None] + logn, score

    def mean_image(self) -> Tensor:
        """The prior mean Σ_j w_j m_j as an image [C, H, W]."""
        return (self.weights[:, None] * self.means).sum(0).float().reshape(self._shape)

    def log_prob(self, z: Tensor, t: Tensor) -> Tensor:
        """log p(z_t) [N] of the VP marginal at integer times t [N]."""
        logits, _ = self.marginal_terms(z, t)
        return torch.logsumexp(logits, dim=1)

    def eps_flat(self, z: Tensor, t: Tensor, cond: Tensor | None = None, guidance_scale: float = 1.0) -> Tensor:
        """Exact ε*(z_t, t) = −σ_t ∇ log p(z_t) (docs/algorithm.md §8)."""
        logits, score = self.marginal_terms(z, t)
        r = torch.softmax(logits, dim=1)
        total = (r[..., None] * score).sum(1)
        ab = self.alphas_cumprod[t.long().to(self.alphas_cumprod.device)].to(total)[:, None]
        return (-(1 - ab).sqrt() * total).to(z.dtype).reshape(z.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact prior samples [n, C, H, W]."""
        comp = torch.multinomial(self.weights.float().cpu(), n, replacement=True, generator=generator)
        e = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs).cpu()
        x = self.means.cpu()[comp] + (chol[comp] @ e[..., None])[..., 0]
        return x.float().reshape((n,) + self._shape).to(self.means.device)

    def exact_posterior(self, operator: LinearOperator, y: Tensor) -> GaussianMixture:
        """Exact posterior p(x | y) for y = A x + n, n ~ N(0, σ_y² I) (docs/algorithm.md §8), per image."""
        yf = y.reshape(y.shape[0], -1).double().to(self.means.device)               # [B, P]
        A = operator_matrix(operator, self._shape).double().to(self.means.device)   # [B or 1, P, D]
        A = A.expand(yf.shape[0], -1, -1)
        s2 = max(operator.sigma_y, 1e-6) ** 2
        P = A.shape[1]
        AS = torch.einsum("bpd,jde->bjpe", A, self.covs)                            # A Σ_j
        S = torch.einsum("bjpe,bqe->bjpq", AS, A) + s2 * torch.eye(P, dtype=A.dtype, device=A.device)
        L = torch.linalg.cholesky(S)
        resid = yf[:, None] - torch.einsum("bpd,jd->bjp", A, self.means)             # y − A m_j
        sol = torch.cholesky_solve(resid[..., None], L)[..., 0]                       # S⁻¹ r
        gain = torch.cholesky_solve(AS, L)                                            # S⁻¹ A Σ
        means = self.means[None] + torch.einsum("bjpd,bjp->bjd", AS, sol)
        covs = self.covs[None] - torch.einsum("bjpd,bjpe->bjde", AS, gain)
        logdet = 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        logw = self.weights.log()[None] - 0.5 * ((resid * sol).sum(-1) + logdet)
        return GaussianMixture(torch.softmax(logw, dim=1), means, 0.5 * (covs + covs.transpose(-1, -2)))


class GaussianPrior(GaussianMixturePrior):
    """Exact-score Gaussian prior N(mean, cov) (docs/algorithm.md §8); `mean` [D] or [C, H, W], `cov` [D, D]."""

    def __init__(self, mean: Tensor, cov: Tensor, *, image_shape: tuple[int, int, int] | None = None,
                 **schedule: object) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if image_shape is None and mean.dim() == 3:
            image_shape = tuple(mean.shape)
        super().__init__(torch.ones(1), mean.reshape(1, -1), torch.as_tensor(cov)[None],
                         image_shape=image_shape, **schedule)  # type: ignore[arg-type]


class SyntheticMixturePrior(GaussianMixturePrior):
    """A config-friendly mixture over small images: J smooth random mean images with well-separated
    modes, each with a smooth squared-exponential covariance (docs/algorithm.md §8 testbed).

    Args:
        image_shape: (C, H, W), e.g. (1, 8, 8).
        n_components: J; `n_components=1` is a Gaussian prior.
        length_scale, variance: covariance kernel over the pixel grid.
        separation: scale of the component means (larger: better separated modes).
        seed: seeds the means.
        noise_path, shift: the Gaussian path ("vp" or "flow"), as for `GaussianMixturePrior`.
        shared_fraction: the components' means agree on the left `shared_fraction` of the columns, so
            an observation of that part alone leaves the mode ambiguous (0: all means differ everywhere).
    """

    def __init__(self, *, image_shape: tuple[int, int, int] = (1, 8, 8), n_components: int = 3,
                 length_scale: float = 2.0, variance: float = 0.1, separation: float = 0.6, seed: int = 0,
                 shared_fraction: float = 0.0, num_timesteps: int = 1000, beta_schedule: str = "linear",
                 beta_start: float = 1e-4, beta_end: float = 0.02, noise_path: str = "vp",
                 shift: float = 1.0) -> None:
        g = torch.Generator().manual_seed(seed)
        cov = smooth_covariance(image_shape, length_scale=length_scale, variance=variance)
        chol = torch.linalg.cholesky(smooth_covariance(image_shape, length_scale=1.5 * length_scale,
                                                       variance=1.0))
        raw = (chol @ torch.randn(cov.shape[0], n_components, generator=g, dtype=torch.float64)).T
        means = separation * raw / raw.std(dim=1, keepdim=True).clamp_min(1e-8) if n_components > 1 \
            else 0.3 * separation * raw
        means = means.reshape((n_components,) + tuple(image_shape)).clone()
        k = int(round(image_shape[-1] * shared_fraction))
        if k > 0:
            means[..., :k] = means[0:1, ..., :k]
        means = means.reshape(n_components, -1)
        super().__init__(torch.ones(n_components), means.clamp(-1, 1), cov[None].repeat(n_components, 1, 1),
                         image_shape=image_shape, num_timesteps=num_timesteps, beta_schedule=beta_schedule,
                         beta_start=beta_start, beta_end=beta_end, noise_path=noise_path, shift=shift)
