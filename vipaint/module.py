"""The Lightning shell: a frozen prior + a method, run per batch in `predict_step`.

λ lives only inside `predict_step` (built per batch, never a parameter of this module), so under
`strategy=ddp` each rank fits the posteriors of its own shard and nothing is averaged across ranks.
Use with `Trainer(inference_mode=False)` (the CLI sets it): the fit and the guidance need gradients.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from vipaint.api import solve_full
from vipaint.metrics import psnr, psnr_hole, ssim
from vipaint.operators import Downsample, GaussianBlur, Identity, Inpainting, LinearOperator
from vipaint.priors.base import Prior
from vipaint.seeding import ImageRNG

__all__ = ["VIPaintModule"]


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

    def on_predict_start(self) -> None:
        # outputs go to the writer's files; keeping every batch's samples in memory would grow without
        # bound on a large dataset, so `trainer.predict` returns None
        if self._writer() is not None:
            self.trainer.predict_loop.return_predictions = False

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
        for b, (x, m) in enumerate(zip(batch["image"], batch["mask"])):
            where = f"dataset index {int(batch['index'][b])} (file {batch['path'][b]})"
            if tuple(x.shape) != want:
                hint = ("set data.channels" if x.shape[0] != want[0] else "set data.image_size")
                raise ValueError(f"{where}: image shape {tuple(x.shape)} does not match the prior's "
                                 f"{want}; {hint}")
            if not torch.isfinite(x).all():
                raise ValueError(f"{where}: the image contains NaN or inf values")
            if tuple(m.shape[-2:]) != want[-2:]:
                raise ValueError(f"{where}: mask shape {tuple(m.shape)} does not match the image {want}")

    def _posterior_metrics(self, post, samples: Tensor, x: Tensor, region: Tensor | None,  # noqa: ANN001
                           idx: Tensor) -> dict[str, Tensor]:
        """Distances to the exact posterior (ALGORITHM.md §8): sliced Wasserstein to 256 exact samples,
        mixture-weight error, and 90 % credible-interval coverage of the ground truth (method and exact)."""
        from vipaint.metrics import credible_coverage, mixture_weight_error, sliced_wasserstein

        gens = ImageRNG(self.hparams.seed, idx, stream="exact-reference").generators
        ref = post.sample(256, gens).float().to(samples.device)
        g = torch.Generator().manual_seed(int(self.hparams.seed))
        reg = region.float() if region is not None else None
        return {"sliced_w2": sliced_wasserstein(samples, ref, generator=g),
                "mode_weight_error": mixture_weight_error(samples.double(), post.weights, post.means, post.covs),
                "coverage90": credible_coverage(samples, x, 0.9, region=reg),
                "coverage90_exact": credible_coverage(ref, x, 0.9, region=reg)}

    def _writer(self):  # noqa: ANN202
        from vipaint.writer import PredictionWriter

        for cb in (self.trainer.callbacks if self._trainer is not None else []):
            if isinstance(cb, PredictionWriter):
                return cb
        return None

    def predict_step(self, batch: dict, batch_idx: int) -> dict | None:
        writer = self._writer()
        keep = [i for i, k in enumerate(batch["index"].tolist())
                if writer is None or not writer.is_done(k, path=batch["path"][i], mask=batch["mask_name"][i])]
        if not keep:
            return None
        if len(keep) < len(batch["index"]):
            batch = {k: (v[keep] if isinstance(v, Tensor) else [v[i] for i in keep]) for k, v in batch.items()}
        self._check(batch)
        x, mask, idx = batch["image"], batch["mask"], batch["index"]
        op = self.make_operator(mask)
        y = op.observe(x, ImageRNG(self.hparams.seed, idx, stream="observation", device=x.device))
        labels = batch["label"].to(x.device)
        cond = labels if self.hparams.use_labels and getattr(self.prior, "num_classes", None) and \
            (labels >= 0).all() else None
        with torch.enable_grad():
            res = solve_full(self.method, self.prior, op, y, n_samples=self.hparams.n_samples,
                             seed=self.hparams.seed, indices=idx, cond=cond,
                             progress=self.trainer.is_global_zero if self._trainer is not None else False,
                             **self.method_options)
        samples = res.samples.detach()
        out_img = op.paste(samples, y) if isinstance(op, Inpainting) else samples
        s = samples.shape[0]
        flat = lambda v: v.reshape((-1,) + tuple(v.shape[2:]))  # noqa: E731
        rep = lambda v: v[None].expand(s, *v.shape).reshape((-1,) + tuple(v.shape[1:]))  # noqa: E731
        metrics = {
            "psnr": psnr(flat(samples), rep(x)).reshape(s, -1).mean(0),
            "ssim": ssim(flat(samples).clamp(-1, 1), rep(x)).reshape(s, -1).mean(0),
            "psnr_mean_sample": psnr(samples.mean(0), x),
        }
        if isinstance(op, Inpainting):
            metrics["psnr_hole"] = psnr_hole(flat(samples), rep(x), rep(mask)).reshape(s, -1).mean(0)
        if hasattr(self.prior, "exact_posterior"):
            post = self.prior.exact_posterior(op, y)
            em, es = post.mean().float(), post.std().float()
            sf = samples.reshape(s, samples.shape[1], -1)
            metrics["exact_mean_rmse"] = (sf.mean(0) - em).pow(2).mean(-1).sqrt()
            metrics["prior_mean_rmse"] = (self.prior.mean_image().reshape(1, -1).to(em) - em).pow(2).mean(-1).sqrt() \
                if hasattr(self.prior, "mean_image") else torch.full_like(em[:, 0], float("nan"))
            region = (1 - mask).reshape(mask.shape[0], -1).bool() if isinstance(op, Inpainting) else None
            if region is not None and region.shape[1] != sf.shape[-1]:
                region = region.repeat(1, sf.shape[-1] // region.shape[1])
            ratio = sf.std(0) / es.clamp_min(1e-8)
            metrics["exact_std_ratio"] = ratio.mean(-1) if region is None else \
                (ratio * region).sum(-1) / region.sum(-1).clamp_min(1)
            metrics.update(self._posterior_metrics(post, sf, x.reshape(x.shape[0], -1), region, idx))
        return {"index": idx.cpu(), "image": x.cpu(), "mask": mask.cpu(), "y": y.cpu(),
                "samples": samples.cpu(), "composite": out_img.cpu(), "mask_name": batch["mask_name"],
                "path": batch["path"], "metrics": {k: v.detach().cpu() for k, v in metrics.items()},
                "failed": res.failed.cpu(), "reasons": res.reasons, "nfe": res.nfe, "n_backprop": res.n_backprop,
                "traces": {k: v.cpu() for k, v in res.traces.items()}, "operator": self.hparams.operator}
