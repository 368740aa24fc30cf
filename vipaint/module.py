"""The Lightning shell: a frozen prior + a method, run per batch in `predict_step`.

`predict_step` observes the batch, calls the method, calls the metrics and returns a `Prediction`; the
`PredictionWriter` callback stores it. Which indices still need computing is decided on the data side
(`InverseProblemDataModule.skip_done`, given the writer's `is_done`).
λ lives only inside the method call (built per batch, never a parameter of this module), so under
`strategy=ddp` each rank fits the posteriors of its own shard and nothing is averaged across ranks.
Use with `Trainer(inference_mode=False)` (the CLI sets it): the fit and the guidance need gradients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor

from vipaint.api import solve_full
from vipaint.data import InverseProblemDataModule
from vipaint.methods import MethodResult
from vipaint.metrics import exact_posterior_metrics, sample_metrics
from vipaint.operators import Downsample, GaussianBlur, Identity, Inpainting, LinearOperator
from vipaint.priors.base import Prior
from vipaint.progress import progress_label
from vipaint.seeding import ImageRNG

__all__ = ["Prediction", "VIPaintModule"]


@dataclass
class Prediction:
    """The outputs of one batch of B images, on the CPU (what `PredictionWriter` stores per index)."""

    index: Tensor                   # [B] dataset indices
    path: list[str]                 # image file (or "prior sample i") of each index
    mask_name: list[str]            # mask type of each index
    image: Tensor                   # [B, C, H, W] ground truths
    mask: Tensor                    # [B, 1, H, W], 1 = observed
    y: Tensor                       # [B, ...] observations
    result: MethodResult            # samples [S, B, C, H, W], network passes, failures, traces
    composite: Tensor               # [S, B, C, H, W]: the samples, with the observed pixels pasted (inpainting)
    metrics: dict[str, Tensor]      # name → [B]
    operator: str                   # "inpainting", "blur", "sr" or "identity"
    seconds_per_image: float = float("nan")   # wall-clock time of the method call / B


class VIPaintModule(L.LightningModule):
    """Posterior sampling for an inverse problem over a dataset.

    Args:
        prior: the frozen diffusion prior (e.g. `vipaint.priors.DiffusersPrior`).
        method: a name from `vipaint.methods.METHODS`.
        method_options: options of the method (VIPaint: fields of `VIPaintConfig`).
        n_samples: samples per observation.
        seed: global seed; every image's streams derive from (seed, dataset index).
        operator: "inpainting" (masks from the data), "blur", "sr" or "identity".
        sigma_y: observation noise std.
        blur_kernel_size, blur_sigma: Gaussian blur settings.
        sr_factor, sr_mode: super-resolution settings.
        use_labels: pass the data's class labels to a class-conditional prior.
    """

    def __init__(self, prior: Prior, *, method: str = "vipaint", method_options: dict | None = None,
                 n_samples: int = 4, seed: int = 0, operator: str = "inpainting", sigma_y: float = 0.05,
                 blur_kernel_size: int = 61, blur_sigma: float = 3.0, sr_factor: int = 4, sr_mode: str = "area",
                 use_labels: bool = True) -> None:
        super().__init__()
        from vipaint.methods import METHODS

        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; available: {sorted(METHODS)}")
        if operator not in ("inpainting", "blur", "sr", "identity"):
            raise ValueError(f"operator must be inpainting, blur, sr or identity, got {operator!r}")
        self.save_hyperparameters(ignore=["prior"])
        self.prior = prior.requires_grad_(False).eval()
        self.method, self.method_options = method, dict(method_options or {})

    def setup(self, stage: str) -> None:
        """Give the datamodule this module's prior: its source "prior" draws the ground truths from it."""
        dm = self.trainer.datamodule
        if isinstance(dm, InverseProblemDataModule):
            dm.set_prior(self.prior)

    def make_operator(self, mask: Tensor) -> LinearOperator:
        h = self.hparams
        if h.operator == "inpainting":
            return Inpainting(mask, sigma_y=h.sigma_y)
        if h.operator == "blur":
            return GaussianBlur(kernel_size=h.blur_kernel_size, sigma=h.blur_sigma, sigma_y=h.sigma_y).to(mask.device)
        if h.operator == "sr":
            return Downsample(factor=h.sr_factor, mode=h.sr_mode, sigma_y=h.sigma_y)
        return Identity(sigma_y=h.sigma_y)

    def _check(self, batch: dict) -> None:
        want = tuple(self.prior.image_shape)
        for b, (x, m) in enumerate(zip(batch["image"], batch["mask"], strict=True)):
            where = f"dataset index {int(batch['index'][b])} (file {batch['path'][b]})"
            if tuple(x.shape) != want:
                hint = ("set data.channels" if x.shape[0] != want[0] else "set data.image_size")
                raise ValueError(f"{where}: image shape {tuple(x.shape)} does not match the prior's "
                                 f"{want}; {hint}")
            if not torch.isfinite(x).all():
                raise ValueError(f"{where}: the image contains NaN or inf values")
            if tuple(m.shape[-2:]) != want[-2:]:
                raise ValueError(f"{where}: mask shape {tuple(m.shape)} does not match the image {want}")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> Prediction:
        """Observe the batch, run the method, compute the metrics (every random draw from (seed, index))."""
        self._check(batch)
        x, mask, idx = batch["image"], batch["mask"], batch["index"]
        op = self.make_operator(mask)
        y = op.observe(x, ImageRNG(self.hparams.seed, idx, stream="observation", device=x.device))
        t0 = time.perf_counter()
        res = self._solve(op, y, idx, self.condition(batch, x.device), self._batch_label(batch_idx, dataloader_idx))
        if x.is_cuda:       # the method's kernels are asynchronous: time them, not their launch
            torch.cuda.synchronize(x.device)
        seconds = (time.perf_counter() - t0) / len(idx)
        samples = res.samples.detach()
        composite = op.paste(samples, y) if isinstance(op, Inpainting) else samples
        metrics = self.metrics(op, y, samples, x, mask, idx)
        result = MethodResult(samples=samples.cpu(), nfe=res.nfe, n_backprop=res.n_backprop, failed=res.failed.cpu(),
                              reasons=res.reasons, traces={k: v.cpu() for k, v in res.traces.items()},
                              n_decode=res.n_decode, n_encode=res.n_encode)
        return Prediction(index=idx.cpu(), path=list(batch["path"]), mask_name=list(batch["mask_name"]),
                          image=x.cpu(), mask=mask.cpu(), y=y.cpu(), result=result, composite=composite.cpu(),
                          metrics=metrics, operator=self.hparams.operator, seconds_per_image=seconds)

    def _batch_label(self, batch_idx: int, dataloader_idx: int) -> str:
        """ "batch 2/3" for the progress lines (the total counts the batches of pending indices)."""
        if self._trainer is None:
            return ""
        totals = self.trainer.num_predict_batches
        total = totals[dataloader_idx] if dataloader_idx < len(totals) else None
        return f"batch {batch_idx + 1}/{int(total) if total not in (None, float('inf')) else '?'}"

    def condition(self, batch: dict, device: torch.device) -> Tensor | None:
        """The `cond` of the batch: prompt ids of its (prompt, negative_prompt) pairs for a text-conditioned
        prior; its class labels for a class-conditional one (with `use_labels`, all labels known); else None."""
        if getattr(self.prior, "is_text_conditioned", False):
            b = len(batch["index"])
            return self.prior.prompt_ids(list(batch.get("prompt", [""] * b)),
                                         list(batch.get("negative_prompt", [""] * b))).to(device)
        labels = batch["label"].to(device)
        use = self.hparams.use_labels and getattr(self.prior, "num_classes", None) and (labels >= 0).all()
        return labels if use else None

    def _solve(self, op: LinearOperator, y: Tensor, idx: Tensor, cond: Tensor | None, label: str) -> MethodResult:
        """The method on the batch's observations; progress (bars or log lines) on rank 0 only."""
        with torch.enable_grad(), progress_label(label):
            return solve_full(self.method, self.prior, op, y, n_samples=self.hparams.n_samples,
                              seed=self.hparams.seed, indices=idx, cond=cond,
                              progress=self.trainer.is_global_zero if self._trainer is not None else False,
                              **self.method_options)

    def metrics(self, op: LinearOperator, y: Tensor, samples: Tensor, x: Tensor, mask: Tensor,
                idx: Tensor) -> dict[str, Tensor]:
        """Per-image metrics [B] (on the CPU): reconstruction, and with an analytic prior the distances to the
        exact posterior (docs/algorithm.md §8)."""
        inpainting = isinstance(op, Inpainting)
        out = sample_metrics(samples, x, mask if inpainting else None)
        if hasattr(self.prior, "exact_posterior"):
            post = self.prior.exact_posterior(op, y)
            s, b = samples.shape[:2]
            sf = samples.reshape(s, b, -1)
            region = None
            if inpainting:   # the hole, repeated over the channels
                region = (1 - mask).reshape(b, -1).bool()
                if region.shape[1] != sf.shape[-1]:
                    region = region.repeat(1, sf.shape[-1] // region.shape[1])
            gens = ImageRNG(self.hparams.seed, idx, stream="exact-reference").generators
            ref = post.sample(256, gens).float().to(samples.device)
            prior_mean = self.prior.mean_image() if hasattr(self.prior, "mean_image") else None
            out.update(exact_posterior_metrics(sf, x.reshape(b, -1), post, ref, region=region, prior_mean=prior_mean,
                                               generator=torch.Generator().manual_seed(int(self.hparams.seed))))
        return {k: v.detach().cpu() for k, v in out.items()}
