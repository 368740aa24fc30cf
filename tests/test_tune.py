"""Issue 20: benchmark splits, the tuning runner and the leaderboard.

Search spaces (published values inside, options the methods accept), seeded proposals with the published
setting first and the NFE cap, the trials file, split checks (a tuned setting is refused on its own rows),
global dataset indices of a split, uint8 samples, the leaderboard from committed files, and (slow) the
tuner killed with SIGKILL, resumed without recomputing a finished configuration, its chosen YAML
reproducing the validation score through the benchmark runner."""

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from vipaint.bench.leaderboard import leaderboard, paired_mean_bootstrap
from vipaint.bench.splits import Split, check_tuned, method_options, spec_split
from vipaint.data import InverseProblemDataModule
from vipaint.masks import BoxMask, RandomPixelMask
from vipaint.methods import METHODS
from vipaint.priors import GaussianMixturePrior
from vipaint.samples_u8 import load_records, load_u8, quantise, save_u8
from vipaint.tune.search import Criterion, Trial, choose, propose, read_trials, write_trials
from vipaint.tune.spaces import search_spaces

ROOT = Path(__file__).resolve().parents[1]


def test_every_method_has_a_space_with_its_published_value_inside():
    spaces = search_spaces()
    assert {"vipaint", "vipaint_official", "dps", "psld", "reddiff", "ddnm", "repaint", "copaint"} <= set(spaces)
    for name, space in spaces.items():
        params = inspect.signature(METHODS[space.method]).parameters
        for k in space.knobs:
            assert k.low <= k.published <= k.high, (name, k)
            assert k.value(0.0) == pytest.approx(k.low, rel=1e-3) and k.value(1.0) == pytest.approx(k.high, rel=1e-3)
        if space.method != "vipaint":        # VIPaint's options go through VIPaintConfig
            assert set(space.published()) <= set(params), name
    assert spaces["vipaint_official"].published()["preset"] == "official"


def test_predicted_nfe_of_the_official_repaint_schedule():
    space = search_spaces()["repaint"]
    assert space.nfe(space.published(), 1000) == 2410          # 250 levels, jumps of 10, 10 passes
    assert search_spaces()["ddnm"].nfe({"n_steps": 100}, 1000) == 100


def test_proposals_are_seeded_extend_with_the_budget_and_respect_the_cap():
    space = search_spaces()["dps"]
    a, b = propose(space, 4, 0, 1000, 1000), propose(space, 6, 0, 1000, 1000)
    assert a[0].options == space.published() and a[0].status == "pending"
    assert [t.options for t in a] == [t.options for t in b[:4]]
    capped = propose(space, 3, 0, 1000, 200)
    assert capped[0].status.startswith("rejected") and capped[0].options == space.published()
    ok = [t for t in capped if t.status == "pending"]
    assert len(ok) == 3 and all(t.predicted_nfe <= 200 for t in ok)
    with pytest.raises(ValueError, match="fit the NFE cap"):
        propose(space, 2, 0, 1000, 10, max_draws=50)


def test_choose_and_the_trials_file_roundtrip(tmp_path):
    trials = [Trial(0, {"zeta": 0.5}, "done", 100, 100.0, 0.3, 20.0, 0.1, 4, {"psnr": 20.0}, "h"),
              Trial(1, {"zeta": 1.0}, "done", 100, 100.0, 0.3, 22.0, 0.1, 4, {}, "h"),
              Trial(2, {"zeta": 2.0}, "rejected: measured", 100, 3000.0, 0.1, 30.0, 0.1, 4, {}, "h")]
    assert choose(trials, Criterion("sliced_w2", "min", "psnr")).config == 1       # tie broken by higher PSNR
    assert choose(trials, Criterion("psnr_like", "max", None)).config == 0
    write_trials(tmp_path / "t.csv", trials)
    back = read_trials(tmp_path / "t.csv")
    assert [t.row() for t in back] == [t.row() for t in trials]


def test_splits_are_disjoint_and_a_tuned_setting_is_refused_on_its_rows(tmp_path):
    spec = {"splits": {"validation": {"start": 10, "num_images": 4}, "test": {"start": 0, "num_images": 10}}}
    val, test = spec_split(spec, "validation"), spec_split(spec, "test")
    assert val.overrides() == ["--data.start=10", "--data.num_images=4"]
    with pytest.raises(ValueError, match="share image rows"):
        spec_split({"splits": {"validation": {"start": 5, "num_images": 4}, "test": {"start": 0, "num_images": 6}}},
                   "test")
    tuned = {"model": {"method": "dps", "method_options": {"zeta": 0.3}},
             "tuning": {"split": "validation", "start": 10, "num_images": 4, "source": "src",
                        "rows_sha256": val.sha256("src")}}
    check_tuned(tuned, "dps", test, "src")                     # disjoint: fine
    check_tuned(tuned, "dps", val, "src")                      # its own rows: a reproduction, allowed
    with pytest.raises(ValueError, match="never reported on the images it was chosen on"):
        check_tuned(tuned, "dps", Split("test", 12, 5), "src")
    path = tmp_path / "dps.yaml"
    path.write_text(yaml.safe_dump(tuned))
    assert method_options("dps", {"tuned": str(path), "n_steps": 50}, test, "src") == \
        {"method": "dps", "zeta": 0.3, "n_steps": 50}
    with pytest.raises(ValueError, match="only on a declared split"):
        method_options("dps", {"tuned": str(path)}, None, "src")
    assert method_options("dps_published", {"published": "dps", "clip_x0": False}, None, "src") == \
        {"method": "dps", "zeta": 0.5, "n_steps": 1000, "clip_x0": False}
    tuned["tuning"]["start"] = 0                                # edited by hand: the hash no longer matches
    with pytest.raises(ValueError, match="edited"):
        check_tuned(tuned, "dps", test, "src")


def test_a_split_keeps_global_indices_images_and_masks():
    prior = GaussianMixturePrior(torch.ones(2) / 2, torch.zeros(2, 16), 0.1 * torch.eye(16).expand(2, 16, 16).clone(),
                                 image_shape=(1, 4, 4))
    masks = [RandomPixelMask(p=0.5), BoxMask(size=0.5)]

    def dataset(**kw):
        dm = InverseProblemDataModule("prior", masks=masks, seed=3, **kw)
        dm.set_prior(prior)
        return dm.full_dataset()

    wide, narrow = dataset(start=2, num_images=3), dataset(start=3, num_images=1)
    assert [wide.index_of(p) for p in range(len(wide))] == [4, 6, 8, 5, 7, 9]
    assert all(wide.position(wide.index_of(p)) == p for p in range(len(wide)))
    a = {it["index"]: it for it in (wide[p] for p in range(len(wide)))}
    for p in range(len(narrow)):
        b = narrow[p]
        assert b["image_index"] == 3 and torch.equal(b["image"], a[b["index"]]["image"])
        assert torch.equal(b["mask"], a[b["index"]]["mask"]) and b["mask_name"] == a[b["index"]]["mask_name"]
    legacy = dataset(num_images=3)                               # no start: the index is the position, as before
    assert [legacy[p]["index"] for p in range(len(legacy))] == list(range(6))


def test_uint8_samples_roundtrip(tmp_path):
    x = torch.rand(3, 1, 4, 4) * 2 - 1
    assert quantise(torch.tensor([-2.0, -1.0, 0.0, 1.0])).tolist() == [0, 0, 128, 255]
    save_u8(tmp_path / "a.npz", x, x[0], (x[0] > 0).float())
    back = load_u8(tmp_path / "a.npz")
    assert (back["composite"] - x).abs().max() <= 1 / 255 + 1e-6
    assert torch.equal(back["mask"], (x[0] > 0).float()) and back["u8_step"] == pytest.approx(2 / 255)
    save_u8(tmp_path / "b.npz", 1.5 * x, x[0], (x[0] > 0).float())     # an analytic prior's range: kept
    assert (load_u8(tmp_path / "b.npz")["composite"] - 1.5 * x).abs().max() <= 3 / 255 / 2 + 1e-6


def test_load_records_keeps_or_drops_indices_without_a_uint8_file(tmp_path):
    """The leaderboard reports every index of metrics/; the FID bootstrap needs the images (require_u8)."""
    _fake_run(tmp_path, [0, 1, 2], 0.0)
    (tmp_path / "samples_u8" / "000001.npz").unlink()
    every, with_u8 = load_records(tmp_path), load_records(tmp_path, require_u8=True)
    assert sorted(every) == [0, 1, 2] and sorted(with_u8) == [0, 2]
    assert "composite" not in every[1] and every[1]["mask_name"] == "box" and every[2]["meta"]["index"] == 2
    assert torch.equal(every[0]["image"], with_u8[0]["image"])


def _fake_run(folder: Path, indices: list[int], offset: float) -> None:
    (folder / "metrics").mkdir(parents=True)
    (folder / "samples_u8").mkdir()
    g = torch.Generator().manual_seed(0)
    for i in indices:
        rec = {"index": i, "mask": ["random", "box"][i % 2], "nfe": 10, "n_decode": 0, "n_encode": 0,
               "sliced_w2": 0.1 + offset + 0.01 * (i % 3), "psnr": 20.0 - offset}
        (folder / "metrics" / f"{i:06d}.json").write_text(json.dumps(rec))
        x = torch.rand(1, 4, 4, generator=g) * 2 - 1
        save_u8(folder / "samples_u8" / f"{i:06d}.npz", x.expand(2, -1, -1, -1), x, torch.ones(1, 4, 4))
    (folder / "timing.json").write_text(json.dumps({"seconds_per_image": 0.5}))


def test_leaderboard_ranks_from_committed_files_and_refuses_other_images(tmp_path):
    spec_file = tmp_path / "exp.yaml"
    spec_file.write_text(yaml.safe_dump({"data": {"source": "prior"}, "model": {}}))
    spec = {"config": str(spec_file), "out": str(tmp_path / "runs"), "fid": False,
            "splits": {"validation": {"start": 5, "num_images": 2}, "test": {"start": 0, "num_images": 3}},
            "tune": {"criterion": {"metric": "sliced_w2", "goal": "min"}}, "methods": {"good": {}, "bad": {}}}
    _fake_run(tmp_path / "runs" / "good", list(range(6)), 0.0)
    _fake_run(tmp_path / "runs" / "bad", list(range(6)), 0.05)
    rows = leaderboard(spec, "spec.yaml", "toy", tmp_path / "lb", replicates=200)
    assert [r["method"] for r in rows] == ["good", "bad"]
    assert rows[1]["delta_lo95"] == pytest.approx(0.05) and rows[1]["p_best_better"] == 1.0
    md = (tmp_path / "lb" / "toy.md").read_text()
    assert "| 1 | good |" in md and (tmp_path / "lb" / "toy_panels.png").is_file()
    (tmp_path / "runs" / "bad" / "metrics" / "000012.json").write_text(json.dumps({"mask": "box", "sliced_w2": 0}))
    with pytest.raises(ValueError, match="test split only"):
        leaderboard(spec, "spec.yaml", "toy", tmp_path / "lb")
    boot = paired_mean_bootstrap({"a": np.arange(5.0), "b": np.arange(5.0) + 1}, 50)
    np.testing.assert_allclose(boot["b"] - boot["a"], 1.0)      # paired: the same resamples


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.mark.slow
def test_tuner_resumes_after_sigkill_and_its_yaml_reproduces_the_validation_score(tmp_path):
    tuned_dir = tmp_path / "tuned"
    spec = {"config": str(ROOT / "experiments" / "gaussian_mixture.yaml"), "out": str(tmp_path / "runs"),
            "fid": False, "overrides": ["--model.n_samples=4", "--data.batch_size=8"],
            "splits": {"validation": {"start": 100, "num_images": 2}, "test": {"start": 0, "num_images": 2}},
            "tune": {"prior": "gm", "methods": ["ddnm"], "configurations": 3, "seed": 0, "nfe_cap": 1000,
                     "criterion": {"metric": "sliced_w2", "goal": "min", "tie_break": "psnr"},
                     "work": str(tmp_path / "work")},
            "methods": {"ddnm": {"tuned": str(tuned_dir / "ddnm.yaml")}}}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "vipaint.tune", "--spec", str(spec_path), "--tuned-dir", str(tuned_dir)]
    trials = tuned_dir / "ddnm.trials.csv"
    p = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline and not read_trials(trials):
        time.sleep(0.02)
    assert p.poll() is None, "the tuner ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    first = read_trials(trials)
    assert [t.status for t in first] == ["done"]
    finished = tmp_path / "work" / "ddnm" / "c000" / "run" / "metrics"
    stamps = {f.name: f.stat().st_mtime_ns for f in finished.glob("*.json")}
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ddnm c000: finished" in proc.stdout and "ddnm c000: {" not in proc.stdout
    assert {f.name: f.stat().st_mtime_ns for f in finished.glob("*.json")} == stamps
    done = read_trials(trials)
    assert [t.config for t in done] == [0, 1, 2] and done[0].row() == first[0].row()
    tuned = yaml.safe_load((tuned_dir / "ddnm.yaml").read_text())
    assert tuned["tuning"]["split"] == "validation" and tuned["tuning"]["budget"]["configurations"] == 3
    # the benchmark runner with the tuned YAML on the validation rows reproduces the tuning score
    bench = [sys.executable, "-m", "vipaint.bench", "--spec", str(spec_path), "--split", "validation"]
    proc = subprocess.run(bench + ["--out", str(tmp_path / "val")], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "val" / "results.json").read_text())["rows"]
    row = next(r for r in rows if r["method"] == "ddnm" and r["mask"] == "all")
    assert row["sliced_w2"] == pytest.approx(tuned["tuning"]["value"], rel=1e-9)
    # and refuses the test split when it overlaps the tuning rows
    spec["splits"]["test"] = {"start": 101, "num_images": 2}
    spec["splits"]["validation"] = {"start": 0, "num_images": 1}
    spec_path.write_text(yaml.safe_dump(spec))
    proc = subprocess.run(bench + ["--split", "test"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0 and "never reported on the images it was chosen on" in proc.stderr


def test_a_committed_tuned_yaml_is_a_predict_config():
    """`vipaint predict --config experiments/… --config benchmarks/tuned/…` runs the tuned setting (its
    `tuning` block is accepted and ignored)."""
    from vipaint.lightning_cli import build_cli

    tuned = ROOT / "benchmarks" / "tuned" / "gaussian_mixture" / "ddnm.yaml"
    cli = build_cli(["--config", str(ROOT / "experiments" / "gaussian_mixture.yaml"), "--config", str(tuned),
                     "--trainer.logger=false"], run=False, save_config_callback=None)
    want = yaml.safe_load(tuned.read_text())["model"]
    assert cli.model.method == want["method"] == "ddnm"
    assert cli.model.method_options == want["method_options"]        # replaced, not merged with VIPaint's preset


class _CountingNet(nn.Module):
    """A tiny feature network that counts the images it sees."""

    num_features, label = 8, "counting"

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.seen = nn.Linear(48, 8), 0
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.proj(x.flatten(1))


def test_leaderboard_rebuild_reuses_the_saved_features(tmp_path, monkeypatch):
    """FID/KID of the uint8 images: a second build reads each row's saved features and gives the same
    numbers without calling the network."""
    import vipaint.metrics

    net = _CountingNet()
    monkeypatch.setattr(vipaint.metrics, "default_inception", lambda: (net, "counting"))
    spec_file = tmp_path / "exp.yaml"
    spec_file.write_text(yaml.safe_dump({"data": {"source": "prior"}, "model": {}}))
    spec = {"config": str(spec_file), "out": str(tmp_path / "runs"), "fid": True,
            "splits": {"validation": {"start": 5, "num_images": 2}, "test": {"start": 0, "num_images": 3}},
            "methods": {"a": {}, "b": {}}}
    _fake_run(tmp_path / "runs" / "a", list(range(6)), 0.0)
    _fake_run(tmp_path / "runs" / "b", list(range(6)), 0.05)
    first = leaderboard(spec, "spec.yaml", "toy", tmp_path / "lb", replicates=50)
    assert net.seen > 0 and (tmp_path / "runs" / "a" / "features" / "leaderboard_u8.pt").is_file()
    net.seen = 0
    second = leaderboard(spec, "spec.yaml", "toy", tmp_path / "lb", replicates=50)
    assert net.seen == 0
    assert [(r["fid"], r["kid"]) for r in second] == [(r["fid"], r["kid"]) for r in first]
    (tmp_path / "runs" / "b" / "timing.json").unlink()       # resumed: per-index timing files, said so
    (tmp_path / "runs" / "b" / "timing").mkdir()
    for i in range(6):
        (tmp_path / "runs" / "b" / "timing" / f"{i:06d}.json").write_text(json.dumps({"s_per_image": 2.0}))
    third = leaderboard(spec, "spec.yaml", "toy", tmp_path / "lb", replicates=50)
    assert [r["s_per_image"] for r in third] == [0.5, 2.0]
    assert "The s_per_image of b is the mean of per-index" in (tmp_path / "lb" / "toy.md").read_text()
