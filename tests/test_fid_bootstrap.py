"""FID from weighted features and the paired bootstrap over observations (vipaint.metrics.bootstrap,
vipaint.bench.bootstrap)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.image.fid import _compute_fid

from vipaint.bench.bootstrap import bootstrap_table
from vipaint.metrics.bootstrap import (
    frechet_distance,
    gaussian_factor,
    paired_fid_bootstrap,
)


def test_frechet_hand_computed():
    # real: (±1, 0), (0, ±1) -> mean 0, unbiased cov (2/3) I; fake = 2·real + (3, 0) -> cov (8/3) I.
    # FID = 9 + 2·(2/3 + 8/3 − 2·sqrt(16/9)) = 9 + 4/3.
    real = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    fake = 2 * real + torch.tensor([3.0, 0.0])
    assert float(frechet_distance(real, fake)) == pytest.approx(9 + 4 / 3, abs=1e-12)
    assert float(frechet_distance(real, real)) == pytest.approx(0.0, abs=1e-12)


def test_frechet_matches_torchmetrics_rank_deficient():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(30, 50, generator=g, dtype=torch.float64)         # n < d, as 300 images vs 2048 features
    fake = 1.3 * torch.randn(45, 50, generator=g, dtype=torch.float64) + 0.2
    ref = _compute_fid(fake.mean(0), torch.cov(fake.T), real.mean(0), torch.cov(real.T))
    assert float(frechet_distance(real, fake)) == pytest.approx(float(ref), rel=1e-6)


def test_weights_equal_repeated_rows():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(12, 6, generator=g), torch.randn(20, 6, generator=g)
    wr, wf = torch.randint(0, 3, (12,), generator=g), torch.randint(0, 3, (20,), generator=g)
    wr[0] = wf[0] = 2                                                     # total weight ≥ 2 for certain
    expected = frechet_distance(real.repeat_interleave(wr, 0), fake.repeat_interleave(wf, 0))
    assert float(frechet_distance(real, fake, wr.double(), wf.double())) == pytest.approx(float(expected), rel=1e-10)
    mean, a = gaussian_factor(real, wr.double())
    assert a.shape[0] == int((wr > 0).sum())
    assert torch.allclose(a.T @ a, torch.cov(real.repeat_interleave(wr, 0).T.double()), atol=1e-12)


def test_factor_rejects_bad_weights():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="non-negative"):
        gaussian_factor(x, torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_factor(x, torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_paired_bootstrap_is_paired_and_seeded():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(20, 5, generator=g)
    a = torch.randn(20, 3, 5, generator=g)
    full, boot = paired_fid_bootstrap(real, {"a": a, "same": a.clone(), "far": a + 5.0}, replicates=30, seed=7)
    assert boot["a"].shape == (30,)
    assert torch.equal(boot["a"], boot["same"])                          # same draws for every method
    assert bool((boot["far"] > boot["a"]).all())
    assert float(full["a"]) == pytest.approx(float(frechet_distance(real, a.flatten(0, 1))))
    _, again = paired_fid_bootstrap(real, {"a": a}, replicates=30, seed=7)
    _, other = paired_fid_bootstrap(real, {"a": a}, replicates=30, seed=8)
    assert torch.equal(again["a"], boot["a"]) and not torch.equal(other["a"], boot["a"])
    with pytest.raises(ValueError, match="expected"):
        paired_fid_bootstrap(real, {"a": a[:10]}, replicates=2)


class _Proj(nn.Module):
    """Tiny fixed feature map ([N, 3, H, W] in [0, 1] -> [N, 6]) that counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.randn(3 * 8 * 8, 6, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.flatten(1) @ self.w


def _write_method(root: Path, method: str, images: np.ndarray, shift: float, masks: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for d in ("samples", "metrics"):
        (root / method / d).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        comp = np.clip(img[None] + shift + 0.3 * rng.standard_normal((3, *img.shape)), -1, 1).astype(np.float32)
        np.savez(root / method / "samples" / f"{i:06d}.npz", composite=comp, samples=comp, image=img,
                 mask=np.ones_like(img))
        (root / method / "metrics" / f"{i:06d}.json").write_text(json.dumps({"mask": masks[i]}))


def test_bootstrap_table_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    images = np.clip(rng.standard_normal((16, 1, 8, 8)) * 0.5, -1, 1).astype(np.float32)
    masks = ["box"] * 8 + ["half"] * 8
    _write_method(tmp_path, "good", images, 0.0, masks, 1)
    _write_method(tmp_path, "bad", images, 0.5, masks, 2)
    net = _Proj()
    rows = bootstrap_table(tmp_path, ["good", "bad"], "good", net, "proj", replicates=40, seed=0)
    assert [(r["method"], r["mask"]) for r in rows] == [(m, k) for k in ("box", "half", "all") for m in ("good", "bad")]
    bad_all = rows[-1]
    assert bad_all["images"] == 16 and bad_all["delta_vs_ref"] > 0 and bad_all["p_ref_lower"] == 1.0
    assert bad_all["delta_lo95"] <= bad_all["delta_hi95"] and "delta_vs_ref" not in rows[-2]
    assert all(r["fid_results_json"] is None for r in rows)                # no results.json yet
    (tmp_path / "results.json").write_text(json.dumps({"features": "proj", "rows": [
        {"method": r["method"], "mask": r["mask"], "fid": r["fid"]} for r in rows]}))
    calls = net.calls
    again = bootstrap_table(tmp_path, ["good", "bad"], "good", net, "proj", replicates=5)
    assert [r["fid_results_json"] for r in again] == [r["fid"] for r in rows]
    assert net.calls == calls                                             # features came from the cache
    assert sorted(p.name for p in (tmp_path / "bad" / "features").iterdir()) == [f"{i:06d}.pt" for i in range(16)]
    # a folder from before the per-observation files: its single cache file is still read
    saved = [torch.load(p, weights_only=True) for m in ("good", "bad") for p in (tmp_path / m / "features").iterdir()]
    (tmp_path / "cache").mkdir()
    torch.save({"label": "proj", "keys": [k for s in saved for k in s["keys"]],
                "features": torch.cat([s["features"] for s in saved])}, tmp_path / "cache" / "fid_features.pt")
    for m in ("good", "bad"):
        shutil.rmtree(tmp_path / m / "features")
    legacy = bootstrap_table(tmp_path, ["good", "bad"], "good", net, "proj", replicates=5)
    assert net.calls == calls and [r["fid"] for r in legacy] == [r["fid"] for r in again]
    (tmp_path / "bad" / "samples" / "000003.npz").unlink()
    (tmp_path / "bad" / "metrics" / "000003.json").unlink()
    with pytest.raises(ValueError, match="same data"):
        bootstrap_table(tmp_path, ["good", "bad"], "good", net, "proj", replicates=5)
    with pytest.raises(ValueError, match="reference"):
        bootstrap_table(tmp_path, ["good", "bad"], "nope", net, "proj", replicates=5)


def test_cli_name_keeps_two_references(tmp_path, monkeypatch):
    import vipaint.metrics
    from vipaint.bench.bootstrap import main

    rng = np.random.default_rng(1)
    images = np.clip(rng.standard_normal((8, 1, 8, 8)) * 0.5, -1, 1).astype(np.float32)
    for name, shift, seed in (("a", 0.0, 1), ("b", 0.3, 2)):
        _write_method(tmp_path, name, images, shift, ["box"] * 8, seed)
    monkeypatch.setattr(vipaint.metrics, "default_inception", lambda: (_Proj(), "proj"))
    main(["--out", str(tmp_path), "--reference", "a", "--replicates", "20"])
    main(["--out", str(tmp_path), "--reference", "b", "--replicates", "20", "--name", "fid_bootstrap_vs_b"])
    first = json.loads((tmp_path / "fid_bootstrap.json").read_text())
    second = json.loads((tmp_path / "fid_bootstrap_vs_b.json").read_text())
    assert (first["reference"], second["reference"]) == ("a", "b")
    assert "Reference: b" in (tmp_path / "fid_bootstrap_vs_b.md").read_text()


def test_bootstrap_from_the_committed_uint8_samples(tmp_path, monkeypatch):
    """`--u8` compares runs from their committed uint8 composites alone (a run resumed over fresh clones has no
    float samples for its first indices): the FIDs are close to the float ones, a rerun takes the features
    from the cache, and an index without a uint8 file is missing from that method."""
    import vipaint.metrics
    from vipaint.bench.bootstrap import main
    from vipaint.samples_u8 import save_u8

    rng = np.random.default_rng(3)
    images = np.clip(rng.standard_normal((12, 1, 8, 8)) * 0.5, -1, 1).astype(np.float32)
    masks = ["box"] * 6 + ["half"] * 6
    for name, shift, seed in (("a", 0.0, 1), ("b", 0.4, 2)):
        _write_method(tmp_path, name, images, shift, masks, seed)
        (tmp_path / name / "samples_u8").mkdir()
        for i in range(len(images)):
            with np.load(tmp_path / name / "samples" / f"{i:06d}.npz") as z:
                comp = torch.from_numpy(z["composite"]) * (1.5 if (name, i) == ("b", 0) else 1.0)
                save_u8(tmp_path / name / "samples_u8" / f"{i:06d}.npz", comp,      # b/0: a wider range
                        torch.from_numpy(z["image"]), torch.from_numpy(z["mask"]))
    net = _Proj()
    floats = bootstrap_table(tmp_path, ["a", "b"], "a", net, "proj", replicates=30)
    with np.load(tmp_path / "b" / "samples_u8" / "000000.npz") as z:
        assert z["range"][1] > 1.0                       # the truth of b/0 lies on another grid than a/0's
    for name in ("a", "b"):
        shutil.rmtree(tmp_path / name / "samples")
        shutil.rmtree(tmp_path / name / "features")
    with pytest.raises(FileNotFoundError, match="--u8"):
        bootstrap_table(tmp_path, ["a", "b"], "a", net, "proj", replicates=30)
    quantised = bootstrap_table(tmp_path, ["a", "b"], "a", net, "proj", replicates=30, u8=True)
    assert [(r["method"], r["mask"]) for r in quantised] == [(r["method"], r["mask"]) for r in floats]
    for f, q in zip(floats, quantised, strict=True):
        assert q["fid"] == pytest.approx(f["fid"], rel=0.05, abs=1e-3) and q["fid_results_json"] is None
    assert quantised[-1]["delta_vs_ref"] > 0
    assert (tmp_path / "b" / "features" / "leaderboard_u8.pt").is_file()
    calls = net.calls
    monkeypatch.setattr(vipaint.metrics, "default_inception", lambda: (net, "proj"))
    main(["--out", str(tmp_path), "--u8", "--replicates", "30"])
    assert net.calls == calls                                             # features came from the cache
    assert json.loads((tmp_path / "fid_bootstrap.json").read_text())["images"] == "samples_u8"
    assert "uint8" in (tmp_path / "fid_bootstrap.md").read_text()
    (tmp_path / "b" / "samples_u8" / "000004.npz").unlink()
    with pytest.raises(ValueError, match="same data"):
        bootstrap_table(tmp_path, ["a", "b"], "a", net, "proj", replicates=5, u8=True)
    shared = bootstrap_table(tmp_path, ["a", "b"], "a", net, "proj", replicates=5, u8=True, common=True)
    assert shared[-1]["images"] == 11 and [r["images"] for r in shared[:2]] == [5, 5]   # index 4 (a box) left out


def test_report_of_a_continued_run_reads_the_uint8_composites_of_indices_computed_elsewhere(tmp_path):
    """A committed run continued in a fresh clone has float samples only for the indices computed here; the
    end-of-run report scores the others from their uint8 composites (FID close to the float one, no raw-sample
    FID over the mix) and names an index that has neither file."""
    from vipaint.bench.features import CachedFeatures
    from vipaint.report import build_report
    from vipaint.samples_u8 import save_u8

    rng = np.random.default_rng(5)
    images = np.clip(rng.standard_normal((8, 1, 8, 8)) * 0.5, -1, 1).astype(np.float32)
    _write_method(tmp_path, "m", images, 0.2, ["box"] * 4 + ["half"] * 4, 1)
    run = tmp_path / "m"
    (run / "samples_u8").mkdir()
    for i in range(len(images)):
        (run / "metrics" / f"{i:06d}.json").write_text(json.dumps({"index": i, "mask": "box" if i < 4 else "half"}))
        with np.load(run / "samples" / f"{i:06d}.npz") as z:
            save_u8(run / "samples_u8" / f"{i:06d}.npz", torch.from_numpy(z["composite"]),
                    torch.from_numpy(z["image"]), torch.from_numpy(z["mask"]))
    net = _Proj()
    net.num_features = 6
    floats = build_report(run, features=CachedFeatures(net, "proj"))["overall"]
    shutil.rmtree(run / "features")
    for i in (0, 1, 5):                                           # computed in another clone
        (run / "samples" / f"{i:06d}.npz").unlink()
    mixed = build_report(run, features=CachedFeatures(net, "proj"))
    assert mixed["overall"]["n_from_u8"] == 3 and mixed["per_mask"]["half"]["n_from_u8"] == 1
    assert mixed["overall"]["fid"] == pytest.approx(floats["fid"], rel=0.05)
    assert mixed["overall"]["fid"] != floats["fid"]               # the three were read from uint8
    assert "fid_raw" not in mixed["overall"]
    (run / "samples_u8" / "000001.npz").unlink()
    with pytest.raises(FileNotFoundError, match="index 1 has metrics"):
        build_report(run, features=CachedFeatures(net, "proj"))
