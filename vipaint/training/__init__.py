"""Training of the small priors shipped in `data/priors/` (no pretrained diffusion model is available offline).

- `data`: Fashion-MNIST / MNIST / image-folder LightningDataModules (1×32×32 in [-1, 1]).
- `ddpm`: `DDPMTrainer` (diffusers UNet2DModel + DDPMScheduler, EMA, export to a diffusers-style folder).
- `autoencoder`: `AutoencoderTrainer` (small AutoencoderKL for latent priors).
- `cli`: `vipaint fit --config experiments/priors/<name>.yaml` (LightningCLI, resume, export).
- `evaluate`: `python -m vipaint.training.evaluate` (FID with `vipaint.metrics.TFInceptionFeatures`).
"""
