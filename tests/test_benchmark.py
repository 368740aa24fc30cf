"""The benchmark runner end to end on a tiny prior: same problems for every method, tables, resume,
report-only, extra overrides and the settings guard; the per-observation feature cache."""

import csv
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_helpers import NoCalls as _NoCalls
from bench_helpers import TinyFeatures as _TinyFeatures
from bench_helpers import bench_spec as _spec

import vipaint.metrics
from vipaint import benchmark, fid_bootstrap  # the old module paths, kept as shims
from vipaint.bench.__main__ import main as bench_main
from vipaint.bench.features import (
    CachedFeatures,
    feature_path,
    image_features,
    load_saved_features,
    save_observation_features,
)
from vipaint.metrics import to_unit_rgb

ROOT = Path(__file__).resolve().parents[1]


def _load_script(relpath: str):
    """Import a script that is not a package module (scripts/, benchmarks/) by its path."""
    spec = importlib.util.spec_from_file_location(Path(relpath).stem, ROOT / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod




def test_benchmark_runs_every_method_on_the_same_problems(tmp_path, tiny_pixel_prior, tiny_imagefolder,
                                                           monkeypatch):
    monkeypatch.setattr(vipaint.metrics, "default_inception", lambda: (_TinyFeatures(), _TinyFeatures.label))
    spec, out = _spec(tmp_path, tiny_pixel_prior, tiny_imagefolder)
    benchmark.main(["--spec", str(spec), "--data.num_images=3"])       # the CLI flag beats the spec's 2 (old path)

    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["mask"]) for r in rows] == [
        (m, k) for m in ("vipaint", "dps", "prior") for k in ("box", "freeform", "all")]
    assert all(int(r["images"]) == (6 if r["mask"] == "all" else 3) for r in rows)
    nfe = {r["method"]: int(r["nfe"]) for r in rows}
    assert nfe["dps"] == 4 and nfe["prior"] == 4 and nfe["vipaint"] > 4
    for r in rows:
        for key in ("psnr", "ssim", "psnr_hole", "diversity_l2", "s_per_image", "fid", "kid"):
            assert np.isfinite(float(r[key])), (r["method"], key)
    assert "tiny test features" in (out / "results.md").read_text()
    summary = (out / "summary.md").read_text().splitlines()
    assert len(summary) == 2 + 3 and summary[2].startswith("| vipaint | 6 |")
    for f in ("metric_vs_nfe.png", "panels.png", "results.json"):
        assert (out / f).stat().st_size > 0

    # the same ground truths, masks and observations for every method
    for i in range(6):
        ref = np.load(out / "vipaint" / "samples" / f"{i:06d}.npz")
        for m in ("dps", "prior"):
            other = np.load(out / m / "samples" / f"{i:06d}.npz")
            for key in ("image", "mask", "y"):
                np.testing.assert_array_equal(ref[key], other[key])

    # report-only rebuilds the same table from the files, its FID features from the run's cache (the
    # network is not called again); a rerun resumes (nothing recomputed)
    assert all(feature_path(out / m, i).is_file() for m in ("vipaint", "dps", "prior") for i in range(6))
    monkeypatch.setattr(vipaint.metrics, "default_inception", lambda: (_NoCalls(), _TinyFeatures.label))
    before = (out / "results.csv").read_text()
    bench_main(["--spec", str(spec), "--report-only"])
    assert (out / "results.csv").read_text() == before

    # the paired FID bootstrap reads the same samples and cached features; it stops if its full-set FID
    # differs from results.json
    fid_bootstrap.main(["--out", str(out), "--methods", "vipaint", "dps", "prior", "--replicates", "20"])
    boot = json.loads((out / "fid_bootstrap.json").read_text())
    table = {(r["method"], r["mask"]): r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert boot["reference"] == "vipaint" and len(boot["rows"]) == 9
    for r in boot["rows"]:
        assert r["fid"] == pytest.approx(table[r["method"], r["mask"]]["fid"], rel=1e-6)
        assert r["fid_results_json"] == table[r["method"], r["mask"]]["fid"]
    assert "p_ref_lower" in (out / "fid_bootstrap.md").read_text()
    mtime = (out / "dps" / "metrics" / "000000.json").stat().st_mtime_ns
    bench_main(["--spec", str(spec), "--only", "dps", "--data.num_images=3"])
    assert (out / "dps" / "metrics" / "000000.json").stat().st_mtime_ns == mtime
    assert json.loads((out / "dps" / "timing.json").read_text())["images"] == 6
    # `--only` keeps the other methods' rows (the table is not replaced by a subset)
    assert (out / "results.csv").read_text() == before
    with pytest.raises(SystemExit):
        bench_main(["--spec", str(spec), "--only", "dsp"])

    # other settings into the same folder stop instead of mixing results
    with pytest.raises(RuntimeError, match="other settings"):
        bench_main(["--spec", str(spec), "--only", "dps", "--model.sigma_y=0.2"])

    # passes that vary between images (CoPaint's backtracking varies by batch) are reported as their mean
    f = out / "dps" / "metrics" / "000005.json"
    meta = json.loads(f.read_text())
    f.write_text(json.dumps({**meta, "nfe": 10}))
    bench_main(["--spec", str(spec), "--report-only"])
    dps = {r["mask"]: r for r in csv.DictReader(open(out / "results.csv")) if r["method"] == "dps"}
    assert float(dps["all"]["nfe"]) == pytest.approx((5 * 4 + 10) / 6)
    assert float(dps[meta["mask"]]["nfe"]) == pytest.approx((2 * 4 + 10) / 3)
    assert int(dps[{"box": "freeform", "freeform": "box"}[meta["mask"]]]["nfe"]) == 4

    # samples are not committed: in a fresh clone a method without them keeps its rows from results.json
    # (same features), so adding a method with `--only` does not drop the others from the table
    kept = [r for r in csv.DictReader(open(out / "results.csv")) if r["method"] == "vipaint"]
    panels = (out / "panels.png").read_bytes()
    shutil.rmtree(out / "vipaint")
    bench_main(["--spec", str(spec), "--only", "dps", "--data.num_images=3"])
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["method"] for r in rows] == ["vipaint"] * 3 + ["dps"] * 3 + ["prior"] * 3
    assert rows[:3] == kept
    assert (out / "panels.png").read_bytes() == panels        # not replaced by a grid without vipaint


def test_benchmark_rejects_unknown_flags(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    spec, _ = _spec(tmp_path, tiny_pixel_prior, tiny_imagefolder)
    with pytest.raises(SystemExit):
        bench_main(["--spec", str(spec), "--bogus"])


@pytest.mark.parametrize("module", ["vipaint.bench", "vipaint.benchmark", "vipaint.bench.bootstrap",
                                    "vipaint.fid_bootstrap"])
def test_module_entry_points(module):
    """`python -m` runs the new package and the old module paths the committed docs use."""
    res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                         check=False)
    assert res.returncode == 0, res.stderr
    assert ("--spec" in res.stdout) == module.endswith(("bench", "benchmark"))
    assert ("--reference" in res.stdout) == module.endswith("bootstrap")


def test_feature_cache_per_observation(tmp_path):
    """Features are computed once per distinct image, saved per (method folder, index) with their keys
    and label, served from the files by a new cache, and not served for an image that changed."""
    calls = []

    class Counting(_TinyFeatures):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return super().forward(x)

    g = torch.Generator().manual_seed(0)
    image, composite = torch.rand(1, 8, 8, generator=g) * 2 - 1, torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    cached = CachedFeatures(Counting())
    both = torch.cat([image[None], composite, image[None]])              # the truth twice: computed once
    feats = image_features(cached, both, chunk=3)
    assert calls == [3, 1] and torch.equal(feats[0], feats[4])
    with torch.no_grad():
        assert torch.allclose(feats, _TinyFeatures()(to_unit_rgb(both)))
    assert not save_observation_features(cached, tmp_path / "m", 7, image, composite + 1)   # not all cached
    assert save_observation_features(cached, tmp_path / "m", 7, image, composite)
    assert feature_path(tmp_path / "m", 7) == tmp_path / "m" / "features" / "000007.pt"
    assert not save_observation_features(cached, tmp_path / "m", 7, image, composite)      # already on disk

    fresh = CachedFeatures(_NoCalls())
    load_saved_features(fresh, tmp_path / "m")
    assert torch.equal(image_features(fresh, torch.cat([image[None], composite])), feats[:4])
    with pytest.raises(AssertionError, match="cache"):                  # another image is not in the file
        image_features(fresh, composite.flip(-1))
    other = CachedFeatures(_NoCalls(), label="another network")
    load_saved_features(other, tmp_path / "m")
    assert other.cache == {}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_speed_benchmark_runs_and_float64_batching_is_exact(tmp_path, tiny_pixel_prior, tiny_imagefolder, dtype):
    """benchmarks/speed.py end to end on a tiny prior; in float64, one image per call and the batched run
    agree to rounding (an image's result does not depend on its batch)."""
    mod = _load_script("benchmarks/speed.py")
    default = torch.get_default_dtype()
    try:
        mod.main(["--prior", tiny_pixel_prior, "--data", tiny_imagefolder, "--images", "3", "--samples", "2",
                  "--iterations", "3", "--refine-steps", "4", "--dtype", dtype, "--out", str(tmp_path)])
    finally:
        torch.set_default_dtype(default)
    rows = {r["setting"]: r for r in json.loads((tmp_path / "speed.json").read_text())["rows"]}
    assert len(rows) == (5 if dtype == "float32" else 3)
    assert all(r["s_per_image"] > 0 and r["nfe"] > 0 for r in rows.values())
    assert rows["batch of all images (plain)"]["max_abs_diff_vs_plain"] == 0
    if dtype == "float64":
        assert rows["one image per call"]["max_abs_diff_vs_plain"] < 1e-9
        assert rows["batch, channels-last"]["max_abs_diff_vs_plain"] < 1e-9


def test_q_noise_level_script(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    """benchmarks/q_noise_level.py end to end on a tiny prior: a larger initial std of q's transitions gives
    noisier chains at T_s (same seeds)."""
    mod = _load_script("benchmarks/q_noise_level.py")
    mod.main(["--prior", tiny_pixel_prior, "--data", tiny_imagefolder, "--images", "2", "--iterations", "1",
              "--std-scale", "1.0", "0.2", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "q_noise_level.json").read_text())["rows"]
    chains = ["forward-noised truth", "q, std_scale 1", "q, std_scale 0.2"]
    assert [r["chain"] for r in rows] == [c for c in chains for _ in range(2)]
    assert all(r["mean_eps_sq"] > 0 for r in rows) and all(r["rec"] > 0 for r in rows[2:])
    assert rows[3]["z_std"] > rows[5]["z_std"]
    assert "| chain | keypoint |" in (tmp_path / "q_noise_level.md").read_text()


def test_hole_ink_by_hand(tmp_path):
    """benchmarks/hole_ink.py: hole means of samples and truth, per mask and overall, against hand values."""
    mod = _load_script("benchmarks/hole_ink.py")
    m = tmp_path / "demo"
    (m / "samples").mkdir(parents=True)
    (m / "metrics").mkdir()
    mask = np.ones((1, 2, 2), np.float32)
    mask[0, 0] = 0                                           # hole: the top row
    image = -np.ones((1, 2, 2), np.float32)
    image[0, 0, 0] = 1                                       # truth ink in the hole: (1 + 0) / 2 = 0.5
    samples = -np.ones((2, 1, 2, 2), np.float32)
    samples[0, 0, 0] = 1                                     # sample ink 1.0 and 0.0 → mean 0.5, |err| 0.5
    for i, kind in enumerate(["box", "half"]):
        np.savez(m / "samples" / f"{i:06d}.npz", samples=samples, image=image, mask=mask)
        (m / "metrics" / f"{i:06d}.json").write_text(json.dumps({"index": i, "mask": kind}))
    rows = {r["mask"]: r for r in [{"mask": k, **v} for k, v in mod.hole_ink(m).items()]}
    assert set(rows) == {"box", "half", "all"} and rows["all"]["images"] == 2
    for r in rows.values():
        assert (r["ink_samples"], r["ink_truth"], r["ink_abs_error"]) == pytest.approx((0.5, 0.5, 0.5))
    mod.main(["--out", str(tmp_path)])
    assert "| demo | all | 2 | 0.5 | 0.5 | 0.5 |" in (tmp_path / "hole_ink.md").read_text()


def test_read_timing_falls_back_to_per_index_files(tmp_path):
    """A run resumed over several sessions has no timing.json: its seconds per image are the mean of the
    per-index files, and only when every index has one."""
    from vipaint.bench.run import read_timing

    folder = tmp_path / "m"
    (folder / "metrics").mkdir(parents=True)
    (folder / "timing").mkdir()
    for i, s in enumerate([1.0, 2.0, 6.0]):
        (folder / "metrics" / f"{i:06d}.json").write_text("{}")
        (folder / "timing" / f"{i:06d}.json").write_text(json.dumps({"s_per_image": s}))
    got = read_timing(folder)
    assert got["seconds_per_image"] == pytest.approx(3.0) and got["images"] == 3 and got["source"] == "per-index"
    (folder / "timing" / "000002.json").unlink()
    assert read_timing(folder) == {}
    (folder / "timing.json").write_text(json.dumps({"seconds_per_image": 0.5}))
    assert read_timing(folder) == {"seconds_per_image": 0.5}
