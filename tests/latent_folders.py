"""Tiny latent diffusers priors for the tests (a pytest plugin: test modules load it with
`pytest_plugins = ["latent_folders"]`, so the folders are built once per session): random AutoencoderKL /
VQModel codecs with UNet2DModel, UNet2DConditionModel (+ external class embedding) and DiTTransformer2DModel
denoisers, saved with `save_pretrained` in the real folder layouts."""

import json
from pathlib import Path

import pytest
import torch

from vipaint.priors import ClassEmbedder, DiffusersPrior

diffusers = pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]
CODEC_BLOCKS = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
N_CLASSES = 5          # cin-like prior: classes 0..4, null 5
DIT_CLASSES = 10       # tiny DiT: classes 0..9, null 10


def kl_codec() -> "diffusers.AutoencoderKL":
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=16, **CODEC_BLOCKS)


def save_kl_unet(root: Path, prediction_type: str = "epsilon") -> None:
    """unet/ + vae/ + scheduler/, no model_index.json: 4×8×8 latents, 3×16×16 images."""
    torch.manual_seed(0)
    diffusers.UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                          norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(root / "unet")
    kl_codec().save_pretrained(root / "vae")
    diffusers.DDPMScheduler(prediction_type=prediction_type).save_pretrained(root / "scheduler")


def save_vq_cin(root: Path) -> None:
    """A converted-cin256-v2-like LDMPipeline folder: UNet2DConditionModel + class_embedder/ + VQModel,
    3×16×16 latents, 3×32×32 images, CompVis "linear" (= scaled_linear) betas."""
    torch.manual_seed(1)
    diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=16, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(root / "unet")
    ClassEmbedder(N_CLASSES, 16).save_pretrained(root / "class_embedder")
    diffusers.VQModel(in_channels=3, out_channels=3, latent_channels=3, num_vq_embeddings=32, vq_embed_dim=3,
                      **CODEC_BLOCKS).save_pretrained(root / "vqvae")
    diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                            clip_sample=False).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "LDMPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vqvae": ["diffusers", "VQModel"]}))


def save_dit(root: Path) -> None:
    """A DiTPipeline folder as on the Hub: model_index.json names `Transformer2DModel` (learned variance,
    out_channels = 2 × 4), vae/ AutoencoderKL, scheduler/; 4×8×8 latents, 3×16×16 images."""
    torch.manual_seed(2)
    diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=DIT_CLASSES,
                                    norm_num_groups=4).save_pretrained(root / "transformer")
    cfg = json.loads((root / "transformer" / "config.json").read_text())
    cfg["_class_name"] = "Transformer2DModel"               # the Hub's name for DiT checkpoints
    (root / "transformer" / "config.json").write_text(json.dumps(cfg))
    kl_codec().save_pretrained(root / "vae")
    diffusers.DDIMScheduler(clip_sample=False).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "DiTPipeline", "id2label": {"0": "a", "1": "b"}, "scheduler": ["diffusers", "DDIMScheduler"],
        "transformer": ["diffusers", "Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}))


@pytest.fixture(scope="session")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = {}
    for name, fn in (("kl_unet", save_kl_unet), ("vq_cin", save_vq_cin), ("dit", save_dit)):
        root = tmp_path_factory.mktemp(name)
        fn(root)
        out[name] = str(root)
    return out


@pytest.fixture(scope="session")
def priors(folders: dict[str, str]) -> dict[str, DiffusersPrior]:
    return {k: DiffusersPrior(v) for k, v in folders.items()}


SPEC = {  # name: (denoiser class, codec, latent shape, image shape, num_classes)
    "kl_unet": ("UNet2DModel", "kl", (4, 8, 8), (3, 16, 16), None),
    "vq_cin": ("UNet2DConditionModel", "vq", (3, 16, 16), (3, 32, 32), N_CLASSES),
    "dit": ("DiTTransformer2DModel", "kl", (4, 8, 8), (3, 16, 16), DIT_CLASSES),
}
NAMES = list(SPEC)


def labels_for(name: str, b: int) -> torch.Tensor | None:
    return None if SPEC[name][4] is None else torch.arange(b) % 3
