"""PredictionWriter: per-index files from a `Prediction`, `is_done` and its image/mask check, the settings
guard and the hand-over of `is_done` to the datamodule, the report at teardown, and a resume through a
Trainer on an analytic prior that recomputes exactly the missing indices, bit-identically."""

from __future__ import annotations

import csv
import json
import re
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from vipaint.data import InverseProblemDataModule
from vipaint.masks import BoxMask
from vipaint.methods import MethodResult
from vipaint.module import Prediction, VIPaintModule
from vipaint.priors import GaussianPrior, SyntheticMixturePrior
from vipaint.writer import PredictionWriter


def hand_prediction(indices=(3, 8), failed=(False, True), s: int = 2) -> Prediction:
    b = len(indices)
    g = torch.Generator().manual_seed(0)
    samples = torch.rand(s, b, 1, 4, 4, generator=g) * 2 - 1
    mask = torch.ones(b, 1, 4, 4)
    mask[..., 1:3, 1:3] = 0
    result = MethodResult(samples=samples, nfe=7, n_backprop=5, failed=torch.tensor(failed),
                          reasons=["non-finite ELBO at iteration 2" if f else "" for f in failed],
                          traces={"objective": torch.arange(3 * b, dtype=torch.float32).reshape(3, b)})
    return Prediction(index=torch.tensor(indices), path=[f"img/{i:03d}.png" for i in indices],
                      mask_name=["box"] * b, image=torch.zeros(b, 1, 4, 4), mask=mask,
                      y=torch.full((b, 1, 4, 4), 0.5), result=result, composite=samples.clamp(-1, 1),
                      metrics={"psnr": torch.tensor([12.5, float("nan")][:b]), "ssim": torch.tensor([0.25, 0.0][:b])},
                      operator="inpainting")


def test_write_per_index_files(tmp_path):
    w = PredictionWriter(str(tmp_path / "run"))
    out = w.output_dir
    assert not w.is_done(3) and not w.is_done(8)
    p = hand_prediction()
    w.write(p)
    # index 3: samples, panel, metrics (written last: marks the index as done)
    z = np.load(out / "samples" / "000003.npz")
    assert set(z) == {"samples", "composite", "y", "image", "mask", "trace_objective"}
    np.testing.assert_array_equal(z["samples"], p.result.samples[:, 0].numpy())
    np.testing.assert_array_equal(z["trace_objective"], [0.0, 2.0, 4.0])
    assert z["mask"].shape == (1, 4, 4) and z["y"].shape == (1, 4, 4)
    assert Image.open(out / "panels" / "000003.png").size[1] == 96          # 4 px upscaled ×24
    rec = json.loads((out / "metrics" / "000003.json").read_text())
    rms = float((p.composite[0, 0] - p.composite[1, 0]).square().mean().sqrt())    # the 2 samples' L2 diversity
    assert rec == {"index": 3, "mask": "box", "path": "img/003.png", "nfe": 7, "n_backprop": 5, "psnr": 12.5,
                   "ssim": 0.25, "diversity_l2": pytest.approx(rms, rel=1e-6)}
    assert w.is_done(3)
    # index 8 failed: only its reason, so a rerun retries it
    assert json.loads((out / "failed" / "000008.json").read_text()) == {
        "index": 8, "reason": "non-finite ELBO at iteration 2", "path": "img/008.png"}
    assert not w.is_done(8) and not (out / "samples" / "000008.npz").exists()
    # the retry succeeds: its outputs are written and the failure record goes
    w.write(hand_prediction(indices=(8,), failed=(False,)))
    assert w.is_done(8) and not (out / "failed" / "000008.json").exists()
    assert sorted(f.name for f in out.rglob("*.tmp*")) == []                 # atomic writes leave no temp files


def test_is_done_checks_image_and_mask(tmp_path):
    w = PredictionWriter(str(tmp_path / "run"))
    w.write(hand_prediction(indices=(1,), failed=(False,)))
    assert w.is_done(1, path="elsewhere/001.png", mask="box")               # same file name, same mask type
    assert w.is_done(1) and w.is_done(1, path="img/001.png")
    with pytest.raises(RuntimeError, match=r"index 1 is now the half mask of img/001\.png.*num_images"):
        w.is_done(1, path="img/001.png", mask="half")
    with pytest.raises(RuntimeError, match=r"index 1 is now the box mask of img/004\.png"):
        w.is_done(1, path="img/004.png", mask="box")
    assert not w.is_done(2, path="img/004.png", mask="box")


def _module(**kw) -> VIPaintModule:
    prior = GaussianPrior(torch.zeros(16), torch.eye(16), image_shape=(1, 4, 4))
    return VIPaintModule(prior, method="ddnm", **kw)


def test_setup_resolves_folder_checks_settings_and_hands_is_done_to_the_datamodule(tmp_path):
    w = PredictionWriter(str(tmp_path / "exp" / "{method}"))
    dm = InverseProblemDataModule("prior", num_images=2, masks=[BoxMask()])
    w.setup(SimpleNamespace(datamodule=dm), _module(sigma_y=0.1), "predict")
    assert w.output_dir == tmp_path / "exp" / "ddnm"
    assert not (w.output_dir / "settings.json").exists()              # written with the first result only
    w.write(hand_prediction())
    assert json.loads((w.output_dir / "settings.json").read_text())["module"]["sigma_y"] == 0.1
    assert dm.done == w.is_done
    with pytest.raises(RuntimeError, match="other settings.*sigma_y"):
        w.setup(SimpleNamespace(datamodule=dm), _module(sigma_y=0.2), "predict")


def test_a_failed_first_run_leaves_its_folder_free(tmp_path):
    """Issue 22 case 7: a run stopped by a bad option writes no settings.json, so the corrected rerun starts."""
    w = PredictionWriter(str(tmp_path / "run"))
    dm = InverseProblemDataModule("prior", num_images=2, masks=[BoxMask()])
    bad = _module(method_options={"n_steps": 0})
    with pytest.raises(ValueError, match=r"option n_steps must be an integer >= 1"):
        w.setup(SimpleNamespace(datamodule=dm), bad, "predict")
    assert not (tmp_path / "run" / "settings.json").exists()
    for kw, message in (({"n_samples": 0}, r"model.n_samples must be an integer >= 1, got 0"),
                        ({"sigma_y": float("nan")}, r"model.sigma_y must be a finite number >= 0, got nan")):
        with pytest.raises(ValueError, match=message):
            w.setup(SimpleNamespace(datamodule=dm), _module(**kw), "predict")
    assert not (tmp_path / "run" / "settings.json").exists()
    w.setup(SimpleNamespace(datamodule=dm), _module(method_options={"n_steps": 5}), "predict")   # no "other settings"
    w.write(hand_prediction())
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["method_options"] == {"n_steps": 5}


def test_teardown_builds_the_report_after_a_barrier(tmp_path):
    w = PredictionWriter(str(tmp_path / "run"))
    w.write(hand_prediction())
    calls = []
    trainer = SimpleNamespace(strategy=SimpleNamespace(barrier=lambda *a: calls.append("barrier")),
                              is_global_zero=True, loggers=[])
    w.teardown(trainer, None, "fit")
    assert calls == [] and not (w.output_dir / "metrics.json").exists()
    w.teardown(trainer, None, "predict")
    assert calls == ["barrier", "barrier"]
    summary = json.loads((w.output_dir / "metrics.json").read_text())
    assert summary["overall"]["n"] == 1 and summary["overall"]["n_failed"] == 1
    assert summary["overall"]["psnr"] == 12.5 and (w.output_dir / "metrics.md").exists()
    trainer.is_global_zero = False                          # other ranks only wait
    (w.output_dir / "metrics.json").unlink()
    w.teardown(trainer, None, "predict")
    assert not (w.output_dir / "metrics.json").exists()


def _run(out, num_images: int = 4) -> None:
    prior = SyntheticMixturePrior(image_shape=(1, 8, 8), seed=0)
    module = VIPaintModule(prior, method="ddnm", method_options={"n_steps": 3}, n_samples=2, seed=1)
    dm = InverseProblemDataModule("prior", num_images=num_images, batch_size=1, seed=0, masks=[BoxMask(size=0.5)])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False, callbacks=[PredictionWriter(str(out))])
    assert trainer.predict(module, datamodule=dm) is None   # outputs go to files, not to memory


def test_resume_recomputes_exactly_the_missing_indices(tmp_path, capsys):
    out = tmp_path / "run"
    _run(out)
    first = {p.stem: np.load(p)["samples"] for p in sorted((out / "samples").glob("*.npz"))}
    assert list(first) == [f"{i:06d}" for i in range(4)]
    mtimes = {p.stem: p.stat().st_mtime_ns for p in (out / "metrics").glob("*.json")}
    for stem in ("000001", "000002"):
        (out / "metrics" / f"{stem}.json").unlink()
        (out / "samples" / f"{stem}.npz").unlink()
    capsys.readouterr()
    _run(out)
    assert "[vipaint] 2 of 4 indices already done, 2 to compute" in capsys.readouterr().out
    for stem, t in mtimes.items():
        assert ((out / "metrics" / f"{stem}.json").stat().st_mtime_ns == t) == (stem not in ("000001", "000002"))
        np.testing.assert_array_equal(np.load(out / "samples" / f"{stem}.npz")["samples"], first[stem])
    # a rerun with nothing left to compute still rebuilds the report
    (out / "metrics.json").unlink()
    _run(out)
    assert json.loads((out / "metrics.json").read_text())["overall"]["n"] == 4
    assert all((out / "metrics" / f"{s}.json").stat().st_mtime_ns == t for s, t in mtimes.items()
               if s not in ("000001", "000002"))


# -- issue 22: provenance, reports of the current run, recovery ------------------------------------------

def test_damaged_files_are_moved_aside_and_recomputed(tmp_path, capsys):
    """Case 8: a truncated .npz and an empty metrics .json are named, moved to corrupt/ and recomputed
    bit-identically; leftover temporary files are removed; the report does not crash."""
    out = tmp_path / "run"
    _run(out)
    first = {p.stem: np.load(p)["samples"] for p in sorted((out / "samples").glob("*.npz"))}
    npz = out / "samples" / "000001.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    (out / "metrics" / "000002.json").write_text("")
    (out / "panels" / "000003.png.tmp12345").write_bytes(b"half a panel")
    capsys.readouterr()
    _run(out)
    text = capsys.readouterr().out
    assert re.search(r"samples/000001\.npz does not load \(BadZipFile.*moved to .*corrupt.*index 1 is recomputed", text)
    assert re.search(r"metrics/000002\.json does not load \(JSONDecodeError.*index 2 is recomputed", text)
    assert "000003.png.tmp12345, left by an interrupted run" in text
    assert "2 of 4 indices already done, 2 to compute" in text
    assert not list(out.rglob("*.tmp*")) and len(list((out / "corrupt").iterdir())) == 2
    for stem, s in first.items():
        np.testing.assert_array_equal(np.load(out / "samples" / f"{stem}.npz")["samples"], s)
    assert json.loads((out / "metrics.json").read_text())["overall"]["n"] == 4


def test_throughput_per_rank_is_reported(tmp_path, capsys):
    out = tmp_path / "run"
    _run(out, num_images=3)
    recs = json.loads((out / "throughput.json").read_text())
    assert [(r["rank"], r["images"]) for r in recs] == [(0, 3)] and recs[0]["seconds"] > 0
    assert 0 <= recs[0]["metric_seconds"] <= recs[0]["seconds"]    # FID features + perceptual, timed while writing
    assert re.search(r"\[vipaint\] rank 0: 3 images in [0-9.]+ s \([0-9.e+-]+ images/s\); FID features \+ "
                     r"perceptual distance [0-9.]+ s \([0-9]+ % of it\)", capsys.readouterr().out)
    _run(out, num_images=3)                          # a resume that computes nothing
    assert [(r["rank"], r["images"]) for r in json.loads((out / "throughput.json").read_text())] == [(0, 0)]


def test_report_covers_exactly_the_indices_of_the_run(tmp_path):
    """Case 5: a rerun with fewer images reports those images only (it reported n = 3 for 1 image)."""
    out = tmp_path / "run"
    _run(out, num_images=3)
    _run(out, num_images=1)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["overall"]["n"] == 1
    assert [r["index"] for r in csv.DictReader(open(out / "metrics.csv"))] == ["0"]


class _PathPrior(SimpleNamespace):
    pass


def test_settings_record_prior_file_hashes_and_name_the_changed_file(tmp_path):
    """Case 3: the prior's weights changing under the same path stops the rerun, naming the file."""
    from vipaint.writer import SettingsMismatchError, check_settings, run_settings

    prior = tmp_path / "prior"
    (prior / "unet").mkdir(parents=True)
    (prior / "unet" / "config.json").write_text("{}")
    (prior / "unet" / "model.safetensors").write_bytes(b"weights A")
    module = SimpleNamespace(method="ddnm", method_options={}, hparams={}, prior=_PathPrior(path=str(prior)))
    settings = run_settings(module)
    assert set(settings["prior"]["files_sha256"]) == {"unet/config.json", "unet/model.safetensors"}
    check_settings(tmp_path / "run", settings)
    check_settings(tmp_path / "run", run_settings(module))                  # same files: fine
    (prior / "unet" / "model.safetensors").write_bytes(b"weights B")
    with pytest.raises(SettingsMismatchError, match=r"prior file unet/model\.safetensors: changed"):
        check_settings(tmp_path / "run", run_settings(module))
    # a folder written before the hashes were recorded still resumes
    old = {**settings, "prior": {k: v for k, v in settings["prior"].items() if k != "files_sha256"}}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "settings.json").write_text(json.dumps(old))
    check_settings(tmp_path / "old", run_settings(module))


def test_changed_image_or_mask_file_stops_the_rerun(tmp_path):
    """Case 3: image or mask files changing under the same names stop the rerun, naming what changed."""
    from tests.test_data import make_folder
    from vipaint.writer import SettingsMismatchError

    folder = make_folder(tmp_path / "data", n=2)
    dm = InverseProblemDataModule(str(folder), num_images=2, cache_dir=str(tmp_path / "cache"))
    w = PredictionWriter(str(tmp_path / "run"))
    dm.setup("predict")
    ds = dm.full_dataset()
    pred = hand_prediction(indices=(0, 1), failed=(False, False))
    pred.mask_name = ["file", "file"]
    w.write(pred, fingerprints=[ds.fingerprint(0), ds.fingerprint(1)])
    rec = json.loads((tmp_path / "run" / "metrics" / "000000.json").read_text())
    assert set(rec) >= {"image_sha256", "mask_sha256"}
    dm.skip_done(w.is_done)
    assert dm.pending() == []
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "masks" / "001.png")
    with pytest.raises(SettingsMismatchError, match=r"the mask file of dataset index 1 .*changed since it was"):
        dm.pending()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "000.png")
    with pytest.raises(SettingsMismatchError, match=r"the image file of dataset index 0 \(.*000\.png\) changed"):
        dm.pending()


def test_a_read_only_results_folder_stops_before_computing(tmp_path, monkeypatch):
    import os

    w = PredictionWriter(str(tmp_path / "run"))
    dm = InverseProblemDataModule("prior", num_images=2, masks=[BoxMask()])
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("metrics") else real(p, mode))
    with pytest.raises(PermissionError, match=r"results folder .*run/metrics is not a writable folder"):
        w.setup(SimpleNamespace(datamodule=dm), _module(), "predict")


def test_atomic_writes_are_fsynced(tmp_path, monkeypatch):
    import os

    from vipaint.provenance import atomic_write

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    atomic_write(tmp_path / "a.json", lambda p: p.write_text("{}"))
    assert (tmp_path / "a.json").read_text() == "{}" and len(synced) == 2     # the file, then its folder
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
