"""FID/KID, perceptual distance and logging of `vipaint predict` runs (issue 23): the same FID/KID as the
benchmark runner on the same problems, 1 vs 2 processes, a resumed run; LPIPS from a locally placed
backbone file; the loggers' keys. FID features: conftest's `TinyFeatures` (the real TF-Inception is
seconds per image on a CPU)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from vipaint.bench.__main__ import main as bench_main
from vipaint.bench.features import feature_path
from vipaint.cli import main
from vipaint.metrics import perceptual_metric
from vipaint.metrics.features import hub_checkpoint
from vipaint.metrics.perceptual import LPIPS_BACKBONE_FILES as BACKBONES

ROOT = Path(__file__).resolve().parents[1]
DIST = ("fid", "kid", "kid_std", "fid_raw", "kid_raw", "n_real", "n_fake")


def _config(tmp: Path, prior: str, images: str, out: Path, *, batch_size: int = 2, num_images: int = 3) -> Path:
    cfg = {
        "seed_everything": 0,
        "model": {"prior": {"class_path": "vipaint.priors.DiffusersPrior", "init_args": {"path": prior}},
                  "method": "dps", "method_options": {"n_steps": 3}, "n_samples": 2, "seed": 3, "sigma_y": 0.05},
        "data": {"source": images, "num_images": num_images, "batch_size": batch_size, "seed": 3, "channels": 1,
                 "cache_dir": str(tmp / "hf-cache"),
                 "masks": [{"class_path": "vipaint.masks.BoxMask", "init_args": {"size": 0.5}},
                           {"class_path": "vipaint.masks.HalfPlaneMask"}]},
        "trainer": {"accelerator": "cpu", "devices": 1, "inference_mode": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(out), "logger": False,
                    "callbacks": [{"class_path": "vipaint.writer.PredictionWriter",
                                   "init_args": {"output_dir": str(out)}}]},
    }
    path = tmp / f"cfg_{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _dist(summary: dict) -> dict:
    """The FID/KID entries of a metrics.json, per mask type and "all"."""
    groups = {"all": summary["overall"], **summary["per_mask"]}
    return {m: {k: d[k] for k in DIST if k in d} for m, d in groups.items()}


def test_predict_and_benchmark_give_identical_fid_kid(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, tmp_path / "predict")
    main(["predict", "--config", str(cfg)])
    summary = json.loads((tmp_path / "predict" / "metrics.json").read_text())
    ours = _dist(summary)
    assert set(ours) == {"all", "box", "half"}
    for m, d in ours.items():
        assert set(d) == set(DIST), m             # inpainting: raw samples differ from the composites
        assert d["n_real"] == (6 if m == "all" else 3) and d["n_fake"] == 2 * d["n_real"]
        assert all(torch.isfinite(torch.tensor(float(v))) for v in d.values())
    assert summary["features"] == "tiny test features (conftest)"
    md = (tmp_path / "predict" / "metrics.md").read_text()
    assert "| fid | kid | fid_raw | kid_raw |" in md and "biased upwards at small n" in md
    assert "6 real vs 12 generated" in md and "python -m vipaint.bench.bootstrap" in md
    assert all(feature_path(tmp_path / "predict", i).is_file() for i in range(6))
    with open(tmp_path / "predict" / "metrics_per_mask.csv") as f:
        table = {r["mask"]: r for r in csv.DictReader(f)}
    assert set(table) == set(ours) and float(table["all"]["fid"]) == ours["all"]["fid"]

    spec = {"config": str(cfg), "out": str(tmp_path / "bench"), "fid": True, "methods": {"dps": {"n_steps": 3}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    bench_main(["--spec", str(tmp_path / "spec.yaml")])
    rows = {r["mask"]: r for r in json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]}
    assert set(rows) == set(ours)
    for m, r in rows.items():
        assert (r["fid"], r["kid"], r["kid_std"]) == (ours[m]["fid"], ours[m]["kid"], ours[m]["kid_std"]), m

    # the benchmark report recomputing every feature itself (files deleted; other batches) agrees to float
    # precision: the same network and the same FID/KID code
    for f in (tmp_path / "bench" / "dps" / "features").glob("*.pt"):
        f.unlink()
    bench_main(["--spec", str(tmp_path / "spec.yaml"), "--report-only"])
    rows = {r["mask"]: r for r in json.loads((tmp_path / "bench" / "results.json").read_text())["rows"]}
    for m, r in rows.items():
        assert r["fid"] == pytest.approx(ours[m]["fid"], rel=1e-5, abs=1e-6)
        assert r["kid"] == pytest.approx(ours[m]["kid"], rel=1e-5, abs=1e-6)


def test_resumed_run_gives_the_same_fid_kid(tmp_path, tiny_pixel_prior, tiny_imagefolder, monkeypatch):
    full = tmp_path / "full"
    main(["predict", "--config", str(_config(tmp_path, tiny_pixel_prior, tiny_imagefolder, full))])
    out = tmp_path / "resumed"
    cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, out, batch_size=4)
    main(["predict", "--config", str(cfg)])
    # as after a SIGKILL after the first batch: indices 4 and 5 never finished (their per-index files,
    # written before metrics/<index>.json, may exist), no report
    for i in (4, 5):
        (out / "metrics" / f"{i:06d}.json").unlink()
    (out / "metrics.json").unlink()
    kept = {i: feature_path(out, i).stat().st_mtime_ns for i in range(4)}
    main(["predict", "--config", str(cfg)])
    assert {i: feature_path(out, i).stat().st_mtime_ns for i in range(4)} == kept    # not recomputed
    resumed, uninterrupted = (json.loads((d / "metrics.json").read_text()) for d in (out, full))
    assert _dist(resumed) == _dist(uninterrupted) and "fid" in _dist(resumed)["all"]


_DRIVER = '''
import sys
import torch
import vipaint.metrics
from vipaint.cli import main


class Tiny(torch.nn.Module):
    num_features, label = 6, "tiny subprocess features"

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 8 * 8, 6)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(6, 3 * 8 * 8, generator=torch.Generator().manual_seed(0)))
            self.proj.bias.zero_()

    def forward(self, x):
        return self.proj(torch.nn.functional.interpolate(x.float(), size=(8, 8)).flatten(1))


vipaint.metrics.default_inception = lambda: (Tiny(), Tiny.label)
main(sys.argv[1:])
'''


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_give_the_same_fid_kid_as_one(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    """`--trainer.devices=2 --trainer.strategy=ddp` on the CPU: rank 0 combines every rank's feature files,
    and features are computed per observation, so FID/KID do not depend on the device count."""
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_PORT", None)
    found = []
    for devices in (1, 2):
        out = tmp_path / f"dev{devices}"
        # batch size 1: the samples themselves are bit-identical only with the same per-process batches
        # (tests/test_cli.py::test_ddp_two_processes_match_one)
        cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, out, batch_size=1)
        cmd = [sys.executable, str(driver), "predict", "--config", str(cfg), f"--trainer.devices={devices}",
               "--trainer.strategy=" + ("ddp" if devices == 2 else "auto")]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((out / "metrics.json").read_text())
        assert summary["features"] == "tiny subprocess features" and summary["overall"]["n"] == 6
        found.append((_dist(summary), {p.name: p.read_bytes() for p in sorted((out / "features").glob("*.pt"))}))
    assert found[0][0] == found[1][0] and "fid" in found[0][0]["all"]
    assert found[0][1].keys() == found[1][1].keys() and len(found[0][1]) == 6


def test_lpips_from_a_locally_placed_backbone_file(tmp_path, monkeypatch):
    """A user who puts the torchvision backbone file in the hub cache gets standard LPIPS, no code change
    (here a random-weight AlexNet saved under the file name torchvision looks for)."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    dist, label = perceptual_metric("auto")
    assert dist is None and label.startswith("LPIPS skipped") and str(tmp_path / "torch") in label
    torch.manual_seed(1)
    f = hub_checkpoint(BACKBONES["alex"])
    f.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), f)
    dist, label = perceptual_metric("auto")
    assert dist is not None and label.startswith("LPIPS (alex")
    a = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.equal(dist(a, a), torch.zeros(2))
    d = dist(a, a.flip(0))
    assert d.shape == (2,) and (d > 0).all()
    # the same file gives the AlexNet features LPIPS uses: the first conv layer is the saved one
    assert torch.equal(dist.net.net.slice1[0].weight, torch.load(f)["features.0.weight"])


def test_predict_reports_lpips_and_logs_per_mask_scalars(tmp_path, tiny_pixel_prior, tiny_imagefolder,
                                                          monkeypatch):
    """With the backbone file in place, the run's per-index records and tables carry `lpips`; the W&B logger
    gets per-mask scalars (PSNR, SSIM, LPIPS, FID, KID, diversity, NFE, seconds per image), the per-image
    table with thumbnails, panels, ELBO curves and the settings (prior identity, method options) as config,
    and the run is grouped by dataset and named after the method."""
    import torchvision
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    f = hub_checkpoint(BACKBONES["alex"])
    f.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), f)
    out = tmp_path / "run"
    cfg = yaml.safe_load(_config(tmp_path, tiny_pixel_prior, tiny_imagefolder, out).read_text())
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.WandbLogger",
                                "init_args": {"project": "vipaint", "name": "tinyset", "save_dir": str(tmp_path),
                                              "offline": True}}
    (tmp_path / "wandb.yaml").write_text(yaml.safe_dump(cfg))
    calls: dict[str, list] = {"metrics": [], "hparams": [], "table": [], "image": []}
    init: dict = {}
    with mock.patch.object(WandbLogger, "log_metrics", lambda self, m, step=None: calls["metrics"].append(m)), \
         mock.patch.object(WandbLogger, "log_hyperparams", lambda self, p: calls["hparams"].append(p)), \
         mock.patch.object(WandbLogger, "log_table", lambda self, key, columns=None, data=None, **k:
                           calls["table"].append((key, columns, data))), \
         mock.patch.object(WandbLogger, "log_image", lambda self, key, images, **k: calls["image"].append(key)), \
         mock.patch.object(WandbLogger, "experiment",
                           property(lambda self: init.update(self._wandb_init) or mock.MagicMock(dir=None))):
        main(["predict", "--config", str(tmp_path / "wandb.yaml")])
    rec = json.loads((out / "metrics" / "000000.json").read_text())
    assert rec["lpips"] > 0 and "diversity_l2" in rec and rec["n_decode"] == 0
    assert " lpips " in (out / "metrics.md").read_text().splitlines()[0]
    assert "Perceptual distance: LPIPS (alex" in (out / "metrics.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["overall"]["lpips"] > 0
    scalars = {k: v for m in calls["metrics"] for k, v in m.items()}
    for mask in ("all", "box", "half"):
        for key in ("psnr", "ssim", "lpips", "fid", "kid", "diversity_l2", "nfe", "s_per_image"):
            assert f"{mask}/{key}" in scalars, (mask, key)
    assert scalars["all/n"] == 6 and scalars["box/n"] == 3
    settings = [p["settings"] for p in calls["hparams"] if "settings" in p]
    assert settings and settings[0]["prior"]["path"] == tiny_pixel_prior
    assert settings[0]["method"] == "dps" and settings[0]["method_options"] == {"n_steps": 3}
    (key, cols, data), = calls["table"]
    assert key == "per_image" and cols[-1] == "panel" and len(data) == 6
    assert all(isinstance(row[-1], wandb.Image) for row in data)
    assert "panels" in calls["image"] and "elbo_curves" not in calls["image"]     # DPS has no ELBO trace
    assert init["group"] == "tinyset" and init["name"] == "dps"


def test_fid_raw_off_extracts_only_truths_and_composites(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    out = tmp_path / "run"
    cfg = yaml.safe_load(_config(tmp_path, tiny_pixel_prior, tiny_imagefolder, out).read_text())
    cfg["trainer"]["callbacks"][0]["init_args"]["fid_raw"] = False
    (tmp_path / "noraw.yaml").write_text(yaml.safe_dump(cfg))
    main(["predict", "--config", str(tmp_path / "noraw.yaml")])
    dist = _dist(json.loads((out / "metrics.json").read_text()))
    assert "fid" in dist["all"] and "fid_raw" not in dist["all"]
    assert len(torch.load(feature_path(out, 0))["keys"]) == 1 + 2        # ground truth + 2 composites
