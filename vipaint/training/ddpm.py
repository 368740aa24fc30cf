"""DDPM training of a small diffusers `UNet2DModel` prior (pixel or latent), with EMA and export.

The exported folder is what `vipaint/priors/diffusers_prior.py` loads:

    <dir>/model_index.json
    <dir>/unet/{config.json, diffusion_pytorch_model.safetensors}   # EMA weights
    <dir>/scheduler/scheduler_config.json                            # DDPMScheduler
    <dir>/vae/{config.json, diffusion_pytorch_model.safetensors}    # latent priors only

Weights are written as float16 safetensors by default (half the size); `from_pretrained` without a
`torch_dtype` loads them into a float32 model (checked in tests/test_training.py).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor, nn
from torch.utils.data import TensorDataset

__all__ = ["DDPMTrainer", "ddim_sample", "save_grid", "write_model_index", "DEFAULT_UNET"]

DEFAULT_UNET: dict[str, Any] = {
    "sample_size": 32,
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64, 128],
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
    "norm_num_groups": 8,
    "attention_head_dim": 32,
}


@torch.no_grad()
def ddim_sample(
    unet: UNet2DModel,
    scheduler_config: dict[str, Any],
    shape: tuple[int, ...],
    steps: int = 50,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> Tensor:
    """Deterministic DDIM (η = 0) samples of `shape` [N, C, H, W] from `unet`, float32 on `device`."""
    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    z = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    out = []
    for chunk in z.split(batch_size):
        x = chunk
        for t in sched.timesteps:
            eps = unet(x, t.to(device).expand(x.shape[0])).sample.float()
            x = sched.step(eps, t, x).prev_sample
        out.append(x)
    return torch.cat(out)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save images [N, C, H, W] in [-1, 1] as one PNG grid (1-pixel gaps); returns the path."""
    from PIL import Image

    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().cpu()
    n, c, h, w = x.shape
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = torch.zeros(c, nrows * (h + 1) + 1, ncol * (w + 1) + 1, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = x[i]
    arr = grid[0].numpy() if c == 1 else grid.permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_model_index(out: Path, components: dict[str, str]) -> None:
    """Write a diffusers-style `model_index.json` naming the component classes in `out`."""
    index: dict[str, Any] = {"_class_name": "VIPaintPrior", "_diffusers_version": _diffusers_version()}
    index.update({name: ["diffusers", cls] for name, cls in components.items()})
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


class DDPMTrainer(L.LightningModule):
    """ε-prediction DDPM training of a `UNet2DModel`, optionally on the latents of a frozen `AutoencoderKL`.

    Loss: E_{x, t, ε} ‖ε − ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t)‖² (MSE, t uniform in 0..T−1).
    EMA: after each optimizer step θ_ema ← d θ_ema + (1 − d) θ, d = min(ema_decay, (1 + n)/(10 + n)).
    Optimiser: AdamW with linear warm-up over `warmup_steps`, then constant (clip via Trainer.gradient_clip_val).

    Args:
        unet: keyword arguments of `UNet2DModel` (defaults: `DEFAULT_UNET`, 1×32×32, ≈3.1 M params).
        num_train_timesteps, beta_start, beta_end, beta_schedule: `DDPMScheduler` settings.
        clip_sample: the scheduler's x̂0 clipping to [-1, 1] when sampling; None = True for pixel
            priors, False for latent priors (latents are not confined to [-1, 1]; clipping them
            destroys the samples). Training is unaffected.
        lr, weight_decay, warmup_steps: optimiser.
        ema_decay: EMA target decay (with the warm-up above).
        sample_every_n_steps: log a DDIM sample grid (EMA weights) every N steps; 0 disables.
        sample_num, sample_steps: grid size and DDIM steps.
        vae_dir: folder with a trained `AutoencoderKL` (`save_pretrained` layout, `scaling_factor` set);
            when given the UNet is trained on z = scaling_factor · E(x).mean.
        precompute_latents: with `vae_dir`, encode the datamodule's in-memory `train_set`
            (a TensorDataset of images, as in `vipaint.training.data`) once at setup instead of
            encoding every batch; other datamodules fall back to encoding on the fly.
        export_dtype: "float16" or "float32" for the exported safetensors.
    """

    def __init__(
        self,
        unet: dict[str, Any] | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        clip_sample: bool | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 500,
        ema_decay: float = 0.999,
        sample_every_n_steps: int = 1000,
        sample_num: int = 64,
        sample_steps: int = 50,
        vae_dir: str | None = None,
        precompute_latents: bool = True,
        export_dtype: str = "float16",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        cfg = dict(DEFAULT_UNET)
        cfg.update(unet or {})
        self.vae: AutoencoderKL | None = None
        if vae_dir is not None:
            self.vae = AutoencoderKL.from_pretrained(vae_dir, low_cpu_mem_usage=False).eval().requires_grad_(False)
            cfg["in_channels"] = cfg["out_channels"] = self.vae.config.latent_channels
        self.unet = UNet2DModel(**cfg)
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)
        if clip_sample is None:
            clip_sample = self.vae is None
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=beta_start,
                                       beta_end=beta_end, beta_schedule=beta_schedule, clip_sample=clip_sample)
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.ema_updates = 0
        self._train_is_latent = False

    # -- data ----------------------------------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the diffusion variable."""
        s = self.unet.config.sample_size
        s = s if isinstance(s, int) else s[0]
        return (self.unet.config.in_channels, s, s)

    @torch.no_grad()
    def to_latent(self, x: Tensor) -> Tensor:
        """Images → diffusion variable (identity for pixel priors, scaled VAE mean otherwise)."""
        if self.vae is None:
            return x
        return self.vae.encode(x.float()).latent_dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def to_image(self, z: Tensor) -> Tensor:
        """Diffusion variable → images in [-1, 1] (unclamped)."""
        if self.vae is None:
            return z
        return self.vae.decode(z.float() / self.vae.config.scaling_factor).sample

    # -- training ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """With a VAE and `precompute_latents`, replace the train images by their latents once."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage != "fit" or self.vae is None or not self.hparams.precompute_latents or dm is None:
            return
        ds = getattr(dm, "train_set", None)
        if not isinstance(ds, TensorDataset) or ds.tensors[0].shape[1:] == self.sample_shape:
            self._train_is_latent = isinstance(ds, TensorDataset)
            return
        x = ds.tensors[0]
        self.vae.to(self.device)
        z = torch.cat([self.to_latent(c.to(self.device)).cpu() for c in x.split(500)])
        dm.train_set = TensorDataset(z, *ds.tensors[1:])
        self._train_is_latent = True

    def diffusion_loss(self, z0: Tensor) -> Tensor:
        """ε-prediction MSE at uniformly drawn timesteps."""
        t = torch.randint(0, self.hparams.num_train_timesteps, (z0.shape[0],), device=z0.device)
        eps = torch.randn_like(z0)
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = ab.sqrt() * z0 + (1 - ab).sqrt() * eps
        return F.mse_loss(self.unet(zt, t).sample.float(), eps)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        loss = self.diffusion_loss(x if self._train_is_latent else self.to_latent(x))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        with torch.random.fork_rng(devices=[]):  # fixed noise, not consuming the training RNG
            torch.manual_seed(batch_idx)
            loss = self.diffusion_loss(self.to_latent(x))
        self.log("val/loss", loss, prog_bar=True, batch_size=x.shape[0], sync_dist=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Optimizer step, then the EMA update (before any checkpoint callback of this batch runs)."""
        super().optimizer_step(*args, **kwargs)
        self.ema_updates += 1
        n = self.ema_updates
        d = min(self.hparams.ema_decay, (1 + n) / (10 + n))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.unet.parameters(), strict=True):
                pe.lerp_(p.detach().to(pe.dtype), 1 - d)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.hparams.sample_every_n_steps
        if every and self.global_step % every == 0 and self.global_step > 0:
            self.log_samples()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ema_updates"] = self.ema_updates

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.ema_updates = int(checkpoint.get("ema_updates", 0))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Module state without the frozen VAE (reloaded from `vae_dir`)."""
        sd = super().state_dict(*args, **kwargs)
        for k in [k for k in sd if k.startswith("vae.")]:
            del sd[k]
        return sd

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if self.vae is not None:
            state_dict = dict(state_dict)
            state_dict.update({f"vae.{k}": v for k, v in self.vae.state_dict().items()})
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- sampling / export ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, steps: int | None = None, seed: int = 0, use_ema: bool = True) -> Tensor:
        """n DDIM samples decoded to images in [-1, 1], from the EMA (default) or raw weights."""
        net = self.ema if use_ema else self.unet
        g = torch.Generator().manual_seed(seed)
        z = ddim_sample(net, dict(self.scheduler.config), (n, *self.sample_shape),
                        steps or self.hparams.sample_steps, g, self.device)
        return self.to_image(z).clamp(-1, 1)

    def log_samples(self) -> Path | None:
        """Write `samples/step_XXXXXXX.png` under the run dir and hand it to the logger (rank 0)."""
        if not self.trainer.is_global_zero:
            return None
        with torch.autocast(self.device.type, enabled=False):
            imgs = self.sample(self.hparams.sample_num)
        root = Path(self.trainer.default_root_dir)
        path = save_grid(imgs, root / "samples" / f"step_{self.global_step:07d}.png")
        logger = self.logger
        if logger is not None and hasattr(logger, "log_image"):  # WandbLogger
            logger.log_image(key="samples", images=[str(path)], step=self.global_step)
        return path

    def export(self, out_dir: str | Path, datamodule: Any = None) -> Path:
        """Write the EMA UNet, the DDPMScheduler (+ VAE) as a diffusers-style folder; returns it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        dtype = getattr(torch, self.hparams.export_dtype)
        unet = copy.deepcopy(self.ema).to("cpu", dtype)
        unet.save_pretrained(out / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(out / "scheduler")
        components = {"unet": "UNet2DModel", "scheduler": "DDPMScheduler"}
        if self.vae is not None:
            copy.deepcopy(self.vae).to("cpu", dtype).save_pretrained(out / "vae", safe_serialization=True)
            components["vae"] = "AutoencoderKL"
        write_model_index(out, components)
        (out / "training_step.json").write_text(json.dumps({"global_step": int(self.global_step),
                                                             "ema_updates": self.ema_updates}) + "\n")
        return out


def count_params(module: nn.Module) -> int:
    """Number of parameters of `module`."""
    return sum(p.numel() for p in module.parameters())
