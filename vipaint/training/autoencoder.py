"""A small KL autoencoder (diffusers `AutoencoderKL`) for latent priors: 1×32×32 ↔ C×8×8.

Loss: L1 + L2 reconstruction through the posterior *mean* (the path the runtime prior uses),
optionally a second reconstruction from a sampled latent (`sample_weight`), plus `kl_weight` · KL(q(z|x) ‖ N(0, I))
per latent
element. After training, `export` measures the std of the training latents (posterior means) and
writes `scaling_factor = 1 / std` into the saved config, so z = scaling_factor · E(x).mean has
unit variance for the latent DDPM (the Stable-Diffusion convention).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor

from vipaint.metrics import psnr
from vipaint.training.ddpm import save_grid

__all__ = ["AutoencoderTrainer", "DEFAULT_VAE", "latent_std"]

DEFAULT_VAE: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 1,
    "latent_channels": 4,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": 32,
    "mid_block_add_attention": False,
}


@torch.no_grad()
def latent_std(vae: AutoencoderKL, batches: Any, max_images: int = 10000) -> float:
    """Std of the posterior means E(x).mean over up to `max_images` images from `batches`."""
    s = s2 = 0.0
    n = 0
    device = next(vae.parameters()).device
    for batch in batches:
        x = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)
        z = vae.encode(x.float()).latent_dist.mean.double()
        s += z.sum().item()
        s2 += z.pow(2).sum().item()
        n += z.numel()
        if n >= max_images * z[0].numel():
            break
    mean = s / n
    return float((s2 / n - mean**2) ** 0.5)


class AutoencoderTrainer(L.LightningModule):
    """Train an `AutoencoderKL` with L1 + L2 reconstruction and a small KL weight.

    Args:
        vae: keyword arguments of `AutoencoderKL` (defaults: `DEFAULT_VAE`, f = 4, 4 latent channels, ≈1.5 M params).
        lr, warmup_steps, weight_decay: AdamW with linear warm-up then cosine decay to 10 % at max_steps.
        kl_weight: weight of the KL term (mean over latent elements).
        l1_weight, l2_weight: reconstruction weights (means over pixels).
        sample_weight: weight of an extra reconstruction loss decoded from a *sampled* latent
            (robustness of the decoder to latent noise; costs a second decoder pass; 0 disables).
        export_dtype: "float16" or "float32" weights in the exported safetensors.
    """

    def __init__(
        self,
        vae: dict[str, Any] | None = None,
        lr: float = 1e-3,
        warmup_steps: int = 200,
        weight_decay: float = 0.0,
        kl_weight: float = 1e-6,
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        sample_weight: float = 0.0,
        export_dtype: str = "float16",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        cfg = dict(DEFAULT_VAE)
        cfg.update(vae or {})
        self.vae = AutoencoderKL(**cfg)

    def losses(self, x: Tensor, sample: bool = True) -> dict[str, Tensor]:
        """Reconstruction (mean path and, when `sample`, a sampled latent) and KL terms."""
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.mean).sample.float()
        out = {"l1": F.l1_loss(rec, x), "l2": F.mse_loss(rec, x), "psnr": psnr(rec.clamp(-1, 1), x).mean()}
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        out["kl"] = kl
        loss = self.hparams.l1_weight * out["l1"] + self.hparams.l2_weight * out["l2"] + self.hparams.kl_weight * kl
        if sample and self.hparams.sample_weight > 0:
            rec_s = self.vae.decode(post.sample()).sample.float()
            w = self.hparams.sample_weight
            h = self.hparams
            loss = loss + w * (h.l1_weight * F.l1_loss(rec_s, x) + h.l2_weight * F.mse_loss(rec_s, x))
        out["loss"] = loss
        return out

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = self.losses(x)
        self.log_dict({f"train/{k}": v for k, v in out.items() if k != "loss"}, batch_size=x.shape[0])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=x.shape[0])
        return out["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = self.losses(x, sample=False)
        self.log("val/psnr", out["psnr"], prog_bar=True, batch_size=x.shape[0], sync_dist=True)
        self.log("val/l2", out["l2"], batch_size=x.shape[0], sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.vae.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warm = max(1, self.hparams.warmup_steps)
        total = max(warm + 1, int(self.trainer.max_steps) if self.trainer.max_steps > 0 else 100_000)

        def factor(s: int) -> float:
            if s < warm:
                return (s + 1) / warm
            p = min(1.0, (s - warm) / (total - warm))
            return 0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(p * torch.pi)).item())

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the posterior mean, clamped to [-1, 1]."""
        return self.vae.decode(self.vae.encode(x.float()).latent_dist.mean).sample.clamp(-1, 1)

    def export(self, out_dir: str | Path, datamodule: Any = None) -> Path:
        """Save the VAE (`save_pretrained`) with `scaling_factor` = 1/std of training latents."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        vae = copy.deepcopy(self.vae).float().eval()
        std = 1.0
        if datamodule is not None:
            if getattr(datamodule, "train_set", None) is None:
                datamodule.setup("fit")
            std = latent_std(vae, datamodule.train_dataloader(), max_images=10000)
        vae.register_to_config(scaling_factor=float(1.0 / std))
        vae.to("cpu", getattr(torch, self.hparams.export_dtype)).save_pretrained(out, safe_serialization=True)
        info: dict[str, Any] = {"global_step": int(self.global_step), "latent_std": std, "scaling_factor": 1.0 / std}
        if datamodule is not None and getattr(datamodule, "test_set", None) is not None:
            x = torch.stack([datamodule.test_set[i][0] for i in range(min(16, len(datamodule.test_set)))])
            rec = self.reconstruct(x.to(self.device)).cpu()
            save_grid(torch.cat([x, rec]), out / "reconstructions.png", nrow=16)
        (out / "training_step.json").write_text(json.dumps(info, indent=2) + "\n")
        return out
