"""`vipaint.lightning_cli.build_cli`, the one LightningCLI builder behind `vipaint predict`, `vipaint fit` and
the benchmark runner: the benchmark's call (run=False), extra top-level arguments, explicit args while
`sys.argv` holds other arguments."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import yaml

from vipaint.lightning_cli import build_cli


def _config(tmp: Path, prior: str, images: str) -> Path:
    cfg = {
        "seed_everything": 0,
        "model": {"prior": {"class_path": "vipaint.priors.DiffusersPrior", "init_args": {"path": prior}},
                  "method": "dps", "n_samples": 1, "seed": 3, "operator": "inpainting", "sigma_y": 0.05},
        "data": {"source": images, "num_images": 1, "batch_size": 1, "seed": 3, "channels": 1,
                 "cache_dir": str(tmp / "hf-cache")},
        "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp / "run")},
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_benchmark_call_builds_without_running(tmp_path, monkeypatch, tiny_pixel_prior, tiny_imagefolder):
    """The benchmark runner's CLI: VIPaintModule + InverseProblemDataModule, no logger, no config file written,
    inference mode off; explicit args parsed while sys.argv holds unrelated arguments, which are restored."""
    from lightning.pytorch.cli import SaveConfigCallback

    from vipaint.data import InverseProblemDataModule
    from vipaint.module import VIPaintModule

    argv = ["vipaint-bench", "--not-a-cli-flag", "x"]
    monkeypatch.setattr(sys, "argv", list(argv))
    cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli = build_cli(["--config", str(cfg), "--trainer.logger=false"], run=False,
                        trainer_defaults={"inference_mode": False}, save_config_callback=None)
    assert not [w for w in caught if "args parameter" in str(w.message)]
    assert sys.argv == argv
    assert type(cli.model) is VIPaintModule and type(cli.datamodule) is InverseProblemDataModule
    assert cli.model.method == "dps" and cli.config.model.n_samples == 1
    assert cli.trainer.logger is None and cli.trainer.predict_loop.inference_mode is False
    assert not any(isinstance(cb, SaveConfigCallback) for cb in cli.trainer.callbacks)
    assert not (tmp_path / "run").exists()          # nothing ran, nothing was written


def test_extra_arguments_reach_the_config(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder)

    def add(parser):
        parser.add_argument("--export_every", type=int, default=0)

    cli = build_cli(["--config", str(cfg), "--export_every", "7"], add_arguments=add, run=False,
                    save_config_callback=None)
    assert cli.config.export_every == 7
    plain = build_cli(["--config", str(cfg)], run=False, save_config_callback=None)
    assert "export_every" not in plain.config
