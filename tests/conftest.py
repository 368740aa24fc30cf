"""Test set-up: offline hubs, W&B disabled, a private torch/HF cache, shared tiny fixtures."""

import os
import tempfile

_CACHE = tempfile.mkdtemp(prefix="vipaint-test-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TORCH_HOME", os.path.join(_CACHE, "torch"))
os.environ.setdefault("HF_HOME", os.path.join(_CACHE, "hf"))
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny tensors on a shared 2-core machine: one intra-op thread is much faster and deterministic.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


class TinyFeatures(torch.nn.Module):
    """A fixed random projection (8×8 RGB → 6) standing in for the FID Inception in tests."""

    num_features = 6
    label = "tiny test features (conftest)"

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, 6)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(6, 3 * 8 * 8, generator=torch.Generator().manual_seed(0)))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.nn.functional.interpolate(x.float(), size=(8, 8)).flatten(1))


@pytest.fixture(autouse=True)
def _tiny_fid_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `vipaint predict` run computes FID/KID; in tests the installed TF-Inception (seconds per image
    on a CPU) is replaced by `TinyFeatures`. A test that wants the real one restores
    `vipaint.metrics.distribution.default_inception`."""
    import vipaint.metrics

    monkeypatch.setattr(vipaint.metrics, "default_inception", lambda: (TinyFeatures(), TinyFeatures.label))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def build_tiny_pixel_prior(root: "os.PathLike[str] | str", *, channels: int = 1, size: int = 8, seed: int = 0) -> str:
    """A seeded tiny diffusers UNet + DDPM scheduler saved with `save_pretrained` under `root`."""
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                                 layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(os.path.join(root, "unet"))
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(os.path.join(root, "scheduler"))
    return str(root)


def build_tiny_imagefolder(root: "os.PathLike[str] | str", *, n: int = 4, size: int = 8, channels: int = 1) -> str:
    """n random PNG images with a metadata.jsonl (file_name, class_id)."""
    import json

    import numpy as np
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        for i in range(n):
            shape = (size, size) if channels == 1 else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(os.path.join(root, f"{i:03d}.png"))
            f.write(json.dumps({"file_name": f"{i:03d}.png", "class_id": i % 3}) + "\n")
    return str(root)


@pytest.fixture(scope="session")
def tiny_pixel_prior(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_pixel_prior(tmp_path_factory.mktemp("tiny_prior"))


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_imagefolder(tmp_path_factory.mktemp("tiny_images"))


def build_tiny_latent_prior(root: "os.PathLike[str] | str", *, seed: int = 0) -> str:
    """A tiny latent prior: AutoencoderKL (1×16×16 ↔ 2×8×8) + latent UNet + DDPM scheduler."""
    import diffusers

    torch.manual_seed(seed)
    diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                          block_out_channels=(8, 16), norm_num_groups=4,
                          down_block_types=("DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(os.path.join(root, "unet"))
    diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 16),
                            layers_per_block=1, norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16
                            ).save_pretrained(os.path.join(root, "vae"))
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(os.path.join(root, "scheduler"))
    return str(root)


@pytest.fixture(scope="session")
def tiny_latent_prior(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_latent_prior(tmp_path_factory.mktemp("tiny_latent_prior"))


@pytest.fixture(scope="session")
def tiny_imagefolder16(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_imagefolder(tmp_path_factory.mktemp("tiny_images16"), size=16)
