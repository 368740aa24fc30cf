"""Benchmarks continued across machines and clones: seconds of resumed or GPU runs flagged in results.md, the
device a run records, uint8 files of indices computed elsewhere, entries that share one run, and tuning
samples made on a machine without the Inception weights, scored here."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from bench_helpers import NoCalls as _NoCalls
from bench_helpers import TinyFeatures as _TinyFeatures
from bench_helpers import bench_spec as _spec

import vipaint.metrics
from vipaint.bench.__main__ import main as bench_main
from vipaint.bench.shared_runs import shared_run_targets


def test_results_md_flags_seconds_from_a_resumed_run(tmp_path):
    """results.md says which methods' seconds come from per-index times of a resumed run, and only those, and
    which rows lack the observations whose float samples stayed in another clone."""
    from vipaint.bench.report import write_results

    rows = [{"method": "a", "mask": "all", "images": 3, "nfe": 10, "s_per_image": 2.0, "timing": "per-index"},
            {"method": "b", "mask": "all", "images": 3, "nfe": 10, "s_per_image": 1.0}]
    write_results(tmp_path, rows, "feat", "perc")
    md = (tmp_path / "results.md").read_text()
    assert "The s_per_image of a is the mean of per-index batch times" in md
    assert "covers" not in md and "cover the" not in md
    write_results(tmp_path, rows[1:], "feat", "perc")
    assert "per-index" not in (tmp_path / "results.md").read_text()
    rows[1]["metrics_files"] = 5            # 3 of 5 observations with float samples here
    write_results(tmp_path, rows, "feat", "perc")
    assert "b: the rows cover the 3 of its 5 observations" in (tmp_path / "results.md").read_text()
    rows[1]["from_u8"] = 2
    write_results(tmp_path, rows, "feat", "perc")
    assert "b: 2 of its 3 observations ran in another clone" in (tmp_path / "results.md").read_text()
    rows[1]["timing_device"] = "cuda:0 (NVIDIA H200)"      # a row sampled on a GPU: its seconds are flagged
    write_results(tmp_path, rows, "feat", "perc")
    assert "The s_per_image of b was measured on a GPU (cuda:0 (NVIDIA H200)" in (tmp_path / "results.md").read_text()


def test_timing_records_the_device_the_predict_ran_on():
    """Lightning moves the module back to the CPU after predict; the device comes from the strategy."""
    import lightning

    from vipaint.bench.run import run_device

    assert run_device(lightning.Trainer(accelerator="cpu", devices=1, logger=False)) == "cpu"


def test_load_items_reads_the_uint8_files_of_indices_computed_in_another_clone(tmp_path):
    """A run continued in a fresh clone: float samples for the indices computed here, committed uint8 files for
    the others; `u8_fallback` reads both (float wins where both exist), marking which came from uint8."""
    from vipaint.bench.report import load_items
    from vipaint.samples_u8 import save_u8

    folder = tmp_path / "m"
    for d in ("samples", "samples_u8", "metrics"):
        (folder / d).mkdir(parents=True)
    x = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    for i in range(4):
        (folder / "metrics" / f"{i:06d}.json").write_text(json.dumps({"index": i, "mask": "box", "psnr": float(i)}))
        comp = (x * (i + 1) / 4).expand(2, -1, -1, -1)
        save_u8(folder / "samples_u8" / f"{i:06d}.npz", comp, x[0], torch.ones(1, 4, 4))
        if i >= 2:
            np.savez(folder / "samples" / f"{i:06d}.npz", composite=comp.numpy(), samples=comp.numpy() + 0.5,
                     image=x[0].numpy(), mask=np.ones((1, 4, 4), np.float32))
    assert [it["index"] for it in load_items(folder)] == [2, 3]
    items = load_items(folder, u8_fallback=True)
    assert [(it["index"], it["u8"]) for it in items] == [(0, True), (1, True), (2, False), (3, False)]
    assert items[1]["meta"]["psnr"] == 1.0 and items[1]["mask_name"] == "box"
    torch.testing.assert_close(items[1]["composite"], (x * 2 / 4).expand(2, -1, -1, -1), atol=1 / 255, rtol=0)
    torch.testing.assert_close(items[3]["samples"], (x + 0.5).expand(2, -1, -1, -1))    # float samples, not u8
    # a run killed between writing an index's samples and its metrics: that index is not done, not a crash
    np.savez(folder / "samples" / "000004.npz", composite=comp.numpy(), samples=comp.numpy(), image=x[0].numpy(),
             mask=np.ones((1, 4, 4), np.float32))
    assert [it["index"] for it in load_items(folder, u8_fallback=True)] == [0, 1, 2, 3]


def test_entries_with_the_same_setting_share_one_run(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    """A tuned entry that chose the published setting is not run twice: its folder links to the twin's."""
    spec, out = _spec(tmp_path, tiny_pixel_prior, tiny_imagefolder)
    s = yaml.safe_load(spec.read_text())
    s["methods"] = {"dps": {"n_steps": 4}, "prior": {"n_steps": 4},
                    "dps_tuned": {"method": "dps", "n_steps": 4}, "dps_other": {"method": "dps", "n_steps": 3}}
    spec.write_text(yaml.safe_dump(s, sort_keys=False))
    bench_main(["--spec", str(spec), "--only", "dps", "--no-fid"])
    mtime = (out / "dps" / "metrics" / "000000.json").stat().st_mtime_ns
    bench_main(["--spec", str(spec), "--only", "dps_tuned", "dps_other", "--no-fid"])
    assert (out / "dps_tuned").is_symlink() and (out / "dps_tuned").resolve() == (out / "dps").resolve()
    assert (out / "dps" / "metrics" / "000000.json").stat().st_mtime_ns == mtime       # nothing recomputed
    assert (out / "dps_other").is_dir() and not (out / "dps_other").is_symlink()       # another setting: its own run
    rows = {(r["method"], r["mask"]): r for r in csv.DictReader(open(out / "results.csv"))}
    for mask in ("box", "freeform", "all"):
        a, b = rows["dps", mask], rows["dps_tuned", mask]
        assert {k: v for k, v in a.items() if k not in ("method", "same_run_as")} == \
            {k: v for k, v in b.items() if k not in ("method", "same_run_as")}
    assert rows["dps_tuned", "all"]["same_run_as"] == "dps" and not rows["dps", "all"]["same_run_as"]
    assert rows["dps_other", "all"]["psnr"] != rows["dps", "all"]["psnr"]
    assert "dps_tuned is the run of dps" in (out / "results.md").read_text()

    # a fresh benchmark that asks for both makes one run, under the first name; a folder of its own is kept
    fresh = tmp_path / "fresh"
    bench_main(["--spec", str(spec), "--only", "dps", "dps_tuned", "--no-fid", "--out", str(fresh)])
    assert not (fresh / "dps").is_symlink() and (fresh / "dps_tuned").is_symlink()
    assert shared_run_targets({"a": {"method": "dps"}, "b": {"method": "dps"}}, fresh) == {"b": "a"}
    (fresh / "b").mkdir()       # the real folder is the run
    assert shared_run_targets({"a": {"method": "dps"}, "b": {"method": "dps"}}, fresh) == {"a": "b"}
    (fresh / "a").mkdir()
    assert shared_run_targets({"a": {"method": "dps"}, "b": {"method": "dps"}}, fresh) == {}


def test_tuning_samples_made_elsewhere_are_scored_from_their_uint8_files(tmp_path, tiny_pixel_prior,
                                                                         tiny_imagefolder, monkeypatch):
    """`vipaint.tune --samples-only` (a GPU machine without the Inception weights) runs the configurations
    and scores nothing; the same command without the flag, given only the per-index and uint8 files,
    scores every configuration without recomputing it."""
    from vipaint.tune.__main__ import main as tune_main

    spec, _ = _spec(tmp_path, tiny_pixel_prior, tiny_imagefolder)
    s = yaml.safe_load(spec.read_text())
    work, tuned = tmp_path / "work", tmp_path / "tuned"
    s.update(samples_u8=True,
             splits={"validation": {"start": 2, "num_images": 2}, "test": {"start": 0, "num_images": 2}},
             tune={"prior": "tiny", "methods": ["ddnm"], "configurations": 2, "seed": 0, "nfe_cap": 1000,
                   "criterion": {"metric": "kid", "goal": "min", "tie_break": "psnr"}, "work": str(work)})
    spec.write_text(yaml.safe_dump(s, sort_keys=False))
    cmd = ["--spec", str(spec), "--tuned-dir", str(tuned)]
    with pytest.raises(SystemExit):          # nothing that changes a result may be passed
        tune_main([*cmd, "--model.sigma_y=0.2"])
    monkeypatch.setattr(vipaint.metrics, "default_inception", lambda: (_NoCalls(), _TinyFeatures.label))
    tune_main([*cmd, "--samples-only", "--data.batch_size=3"])           # must not touch a feature network
    runs = sorted(work.glob("ddnm/c*/run"))
    assert len(runs) == 2 and not tuned.exists()
    for run in runs:           # what comes back from the other machine: no float samples
        assert len(list((run / "samples_u8").glob("*.npz"))) == 4
        shutil.rmtree(run / "samples")
    stamps = {f: f.stat().st_mtime_ns for run in runs for f in (run / "metrics").glob("*.json")}
    monkeypatch.setattr(vipaint.metrics, "default_inception", lambda: (_TinyFeatures(), _TinyFeatures.label))
    tune_main(cmd)
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps            # scored, not recomputed
    trials = list(csv.DictReader(open(tuned / "ddnm.trials.csv")))
    assert [t["status"] for t in trials] == ["done", "done"]
    assert all(np.isfinite(float(t["value"])) and int(t["images"]) == 4 for t in trials)
    assert yaml.safe_load((tuned / "ddnm.yaml").read_text())["tuning"]["criterion"]["metric"] == "kid"
