"""Shared pieces of the benchmark tests: a tiny stand-in for the Inception features and a tiny benchmark spec."""


import torch
import yaml
from torch import nn

__all__ = ["NoCalls", "TinyFeatures", "bench_spec"]


class TinyFeatures(nn.Module):
    """A fixed random projection standing in for Inception (FID/KID need only a feature map)."""

    num_features = 6
    label = "tiny test features"

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 8 * 8, 6)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(6, 3 * 8 * 8, generator=torch.Generator().manual_seed(0)))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.interpolate(x.float(), size=(8, 8)).flatten(1))


class NoCalls(TinyFeatures):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("features should have come from the cache")


def bench_spec(tmp_path, prior, images) -> tuple:
    cfg = {
        "seed_everything": 0,
        "model": {"prior": {"class_path": "vipaint.priors.DiffusersPrior", "init_args": {"path": prior}},
                  "method": "vipaint", "n_samples": 2, "seed": 1, "sigma_y": 0.05},
        "data": {"source": images, "num_images": 3, "batch_size": 4, "seed": 1, "channels": 1,
                 "cache_dir": str(tmp_path / "hf-cache"),
                 "masks": [{"class_path": "vipaint.masks.BoxMask"}, {"class_path": "vipaint.masks.FreeFormMask"}]},
        "trainer": {"accelerator": "cpu", "devices": 1, "inference_mode": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path / "root"),
                    "callbacks": [{"class_path": "vipaint.writer.PredictionWriter",
                                   "init_args": {"output_dir": str(tmp_path / "unused")}}]},
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "bench"
    spec = {"config": str(tmp_path / "exp.yaml"), "out": str(out), "fid": True,
            "overrides": ["--data.num_images=2"],
            "methods": {"vipaint": {"iterations": 2, "n_mc": 2, "refine_steps": 3},
                        "dps": {"n_steps": 4}, "prior": {"n_steps": 4}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return tmp_path / "spec.yaml", out

