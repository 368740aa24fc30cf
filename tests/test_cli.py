"""The real CLI path: a tiny diffusers prior reloaded with from_pretrained, predict end to end, resume,
and devices=1 vs devices=2 (CPU DDP) identity."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vipaint.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp: Path, prior: str, images: str, out: Path, *, batch_size: int = 2, fid: bool = True) -> Path:
    cfg = {
        "seed_everything": 0,
        "model": {
            "prior": {"class_path": "vipaint.priors.DiffusersPrior", "init_args": {"path": prior}},
            "method": "vipaint",
            "method_options": {"iterations": 2, "n_mc": 2, "refine_steps": 3},
            "n_samples": 2, "seed": 3, "operator": "inpainting", "sigma_y": 0.05,
        },
        "data": {
            "source": images, "num_images": 3, "batch_size": batch_size, "seed": 3, "channels": 1,
            "cache_dir": str(tmp / "hf-cache"),
            "masks": [{"class_path": "vipaint.masks.BoxMask", "init_args": {"size": 0.5}},
                      {"class_path": "vipaint.masks.HalfPlaneMask"}],
        },
        "trainer": {
            "accelerator": "cpu", "devices": 1, "inference_mode": False, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(out), "logger": False,
            "callbacks": [{"class_path": "vipaint.writer.PredictionWriter",
                           "init_args": {"output_dir": str(out), "fid": fid}}],
        },
    }
    path = tmp / f"cfg_{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _samples(out: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p)["samples"] for p in sorted((out / "samples").glob("*.npz"))}


def test_predict_end_to_end_and_resume(tmp_path, tiny_pixel_prior, tiny_imagefolder, capsys):
    out = tmp_path / "run"
    cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, out)
    main(["predict", "--config", str(cfg)])
    # progress inside each batch; stderr is not a terminal here, so log lines at the end of each stage
    err = capsys.readouterr().err
    for b in (1, 2, 3):
        line = rf"^\[vipaint\] batch {b}/3 · VIPaint fit 2/2 · elbo -?[0-9.e+]+ · \d+ s$"
        assert re.search(line, err, re.MULTILINE), err
        assert re.search(rf"^\[vipaint\] batch {b}/3 · VIPaint refine (\d+)/\1 · \d+ s$", err, re.MULTILINE), err
    files = sorted((out / "metrics").glob("*.json"))
    assert [f.stem for f in files] == [f"{i:06d}" for i in range(6)]          # 3 images × 2 masks
    assert len(list((out / "panels").glob("*.png"))) == 6
    first = _samples(out)
    assert all(v.shape == (2, 1, 8, 8) and np.isfinite(v).all() for v in first.values())
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["overall"]["n"] == 6 and set(summary["per_mask"]) == {"box", "half"}
    assert "psnr" in summary["overall"] and (out / "metrics.md").exists()

    # resume: remove two outputs; the rerun recomputes exactly those and leaves the rest untouched
    mtimes = {f.stem: f.stat().st_mtime_ns for f in files}
    for stem in ("000001", "000004"):
        (out / "metrics" / f"{stem}.json").unlink()
        (out / "samples" / f"{stem}.npz").unlink()
    main(["predict", "--config", str(cfg)])
    assert "[vipaint] 4 of 6 indices already done, 2 to compute" in capsys.readouterr().out
    again = _samples(out)
    for stem, t in mtimes.items():
        now = (out / "metrics" / f"{stem}.json").stat().st_mtime_ns
        assert (now == t) == (stem not in ("000001", "000004"))
        # recomputed images ran in a smaller batch: equal up to float noise
        np.testing.assert_allclose(again[stem], first[stem], atol=1e-4, rtol=1e-4)


def test_rerun_with_other_settings_stops(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    """A resume must not mix results of different settings; batch size and num_images may change."""
    out = tmp_path / "run"
    cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, out)
    data = yaml.safe_load(cfg.read_text())
    data["data"]["num_images"] = 1
    cfg.write_text(yaml.safe_dump(data))
    main(["predict", "--config", str(cfg)])
    settings = json.loads((out / "settings.json").read_text())
    assert settings["method"] == "vipaint" and settings["module"]["sigma_y"] == 0.05
    assert settings["prior"]["path"] == str(tiny_pixel_prior) and len(settings["data"]["masks"]) == 2
    # two mask types: index k is (image k mod N, mask k div N), so N = 2 maps index 1 (half-plane of image 0
    # here) to the box of image 1; the rerun must stop instead of taking index 1 as done
    with pytest.raises(RuntimeError, match=r"index 1 is now the box mask of .*[^0-9]001\.png.*num_images"):
        main(["predict", "--config", str(cfg), "--data.batch_size=1", "--data.num_images=2"])
    assert len(list((out / "metrics").glob("*.json"))) == 2
    main(["predict", "--config", str(cfg), "--data.batch_size=1"])          # fine: other batch size
    for flag, word in (("--model.sigma_y=0.1", "sigma_y"), ("--data.seed=4", "seed"),
                       ('--model.method_options={"iterations": 3, "n_mc": 2, "refine_steps": 3}', "iterations")):
        with pytest.raises(RuntimeError, match=f"other settings.*{word}"):
            main(["predict", "--config", str(cfg), flag])
    assert len(list((out / "metrics").glob("*.json"))) == 2


def test_more_images_extend_a_one_mask_run(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    """With one mask type index k is image k for every num_images: adding images resumes the run."""
    out = tmp_path / "run"
    cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, out)
    data = yaml.safe_load(cfg.read_text())
    data["data"]["num_images"], data["data"]["masks"] = 1, data["data"]["masks"][:1]
    cfg.write_text(yaml.safe_dump(data))
    main(["predict", "--config", str(cfg)])
    first = (out / "metrics" / "000000.json").stat().st_mtime_ns
    main(["predict", "--config", str(cfg), "--data.num_images=3"])
    assert [f.stem for f in sorted((out / "metrics").glob("*.json"))] == ["000000", "000001", "000002"]
    assert (out / "metrics" / "000000.json").stat().st_mtime_ns == first
    assert json.loads((out / "metrics" / "000002.json").read_text())["path"].endswith("002.png")


def test_batch_size_does_not_change_results(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    outs = []
    for bs in (1, 3):
        out = tmp_path / f"bs{bs}"
        main(["predict", "--config", str(_config(tmp_path, tiny_pixel_prior, tiny_imagefolder, out, batch_size=bs))])
        outs.append(_samples(out))
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        np.testing.assert_allclose(outs[0][k], outs[1][k], atol=1e-4, rtol=1e-4)


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    """devices=2 (gloo, strategy=ddp, real CLI in a subprocess) writes the same samples as devices=1."""
    # one thread per process in both runs: CPU kernels reduce in a thread-count-dependent order, and
    # Lightning gives each DDP rank a share of the cores
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_PORT", None)
    results, summaries = [], []
    for devices in (1, 2):
        out = tmp_path / f"dev{devices}"
        # FID across ranks has its own test (test_predict_metrics.py); here the subprocesses would load the real
        # Inception network, which the in-process stub cannot replace
        cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, out, batch_size=1, fid=False)
        cmd = [sys.executable, "-m", "vipaint.cli", "predict", "--config", str(cfg),
               f"--trainer.devices={devices}", "--trainer.strategy=" + ("ddp" if devices == 2 else "auto")]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if devices == 2:
            # resume with fewer pending indices than ranks: rank 1 gets none, and the report is still built
            (out / "metrics" / "000004.json").unlink()
            (out / "metrics.json").unlink()
            proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "5 of 6 indices already done, 1 to compute" in proc.stdout
        # explicit args with a non-empty sys.argv: no LightningCLI "args and command line" warning, while
        # the DDP launch still re-runs the real command line (the child ranks got the config)
        assert "args parameter is intended" not in proc.stderr
        results.append(_samples(out))
        summaries.append(json.loads((out / "metrics.json").read_text()))
        assert summaries[-1]["overall"]["n"] == 6
    assert results[0].keys() == results[1].keys() and len(results[0]) == 6
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k])   # bit-identical, same per-process batch
    assert summaries[0] == summaries[1]                                 # and so are the reported metrics


def test_inpaint_single_image(tmp_path, tiny_pixel_prior, tiny_imagefolder, capsys):
    from PIL import Image

    mask = np.ones((8, 8), np.uint8) * 255
    mask[2:6, 2:6] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "res" / "result.png"
    main(["inpaint", str(Path(tiny_imagefolder) / "000.png"), str(tmp_path / "mask.png"), "--prior", tiny_pixel_prior,
          "--out", str(out), "--samples", "2", "--iterations", "2", "--refine-steps", "2"])
    err = capsys.readouterr().err                            # progress as log lines (stderr is not a terminal)
    assert re.search(r"^\[vipaint\] VIPaint fit 2/2 · elbo -?[0-9.e+]+ · \d+ s$", err, re.MULTILINE), err
    assert re.search(r"^\[vipaint\] VIPaint refine 2/2 · \d+ s$", err, re.MULTILINE), err
    assert Image.open(out).size == (8, 8)
    assert (out.parent / "result_panel.png").exists()
    samples = np.load(out.parent / "result_samples.npz")["samples"]
    obs = np.asarray(Image.open(Path(tiny_imagefolder) / "000.png"), np.float32) / 127.5 - 1
    # observed pixels are pasted from the (noisy, σ_y = 0.05) observation
    assert np.abs(samples[:, 0][:, mask > 0] - obs[mask > 0]).max() < 0.3


def test_unknown_command_and_help(capsys):
    main(["--help"])
    assert "predict" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["frobnicate"])


FAST = {"vipaint": {"iterations": 2, "n_mc": 2, "refine_steps": 2}, "dps": {"n_steps": 3},
        "reddiff": {"n_steps": 3}, "ddnm": {"n_steps": 3}, "prior": {"n_steps": 3}, "psld": {"n_steps": 3},
        "repaint": {"t_T": 4, "jump_length": 2, "jump_n_sample": 2}, "copaint": {"n_steps": 3},
        "copaint_tt": {"n_steps": 4, "jump_length": 2}}


@pytest.mark.parametrize("kind,method", [("pixel", m) for m in FAST if m != "psld"] +
                         [("latent", m) for m in ("vipaint", "dps", "psld", "reddiff", "ddnm", "prior", "repaint",
                                                  "copaint")])
def test_every_method_through_the_cli(tmp_path, kind, method, tiny_pixel_prior, tiny_imagefolder,
                                      tiny_latent_prior, tiny_imagefolder16):
    prior, images = (tiny_pixel_prior, tiny_imagefolder) if kind == "pixel" else (tiny_latent_prior, tiny_imagefolder16)
    out = tmp_path / "run"
    cfg = _config(tmp_path, prior, images, out)
    main(["predict", "--config", str(cfg), "--data.num_images=2", f"--model.method={method}",
          f"--model.method_options={json.dumps(FAST[method])}"])
    samples = _samples(out)
    size = 8 if kind == "pixel" else 16
    assert len(samples) == 4 and all(v.shape == (2, 1, size, size) and np.isfinite(v).all() for v in samples.values())
    rec = json.loads((out / "metrics" / "000000.json").read_text())
    assert rec["nfe"] > 0 and "psnr" in rec


def test_output_folder_per_method(tmp_path, tiny_pixel_prior, tiny_imagefolder):
    """`{method}` in the writer's folder keeps runs of different methods apart (no false resume)."""
    cfg = _config(tmp_path, tiny_pixel_prior, tiny_imagefolder, tmp_path / "unused")
    text = cfg.read_text().replace(f"output_dir: {tmp_path / 'unused'}", f"output_dir: {tmp_path / 'exp'}/{{method}}")
    cfg.write_text(text)
    for method in ("vipaint", "ddnm"):
        main(["predict", "--config", str(cfg), "--data.num_images=1", f"--model.method={method}",
              f"--model.method_options={json.dumps(FAST[method])}"])
    assert len(list((tmp_path / "exp" / "vipaint" / "metrics").glob("*.json"))) == 2
    assert len(list((tmp_path / "exp" / "ddnm" / "metrics").glob("*.json"))) == 2


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_experiment_yaml_parses(path, capsys):
    """Each shipped experiment resolves through the real CLI parser (YAML syntax, class paths, types)."""
    with pytest.raises(SystemExit) as info:
        main(["predict", "--config", str(path), "--print_config"])
    assert info.value.code in (0, None)
    cfg = yaml.safe_load(capsys.readouterr().out)
    writers = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("PredictionWriter")]
    assert len(writers) == 1 and "{method}" in writers[0]["init_args"]["output_dir"]


# -- issue 22: `vipaint inpaint` inputs, outputs and error presentation -------------------------------------

def _non_square_pair(tmp_path: Path) -> tuple[Path, Path]:
    img = np.zeros((37, 100), np.uint8)
    mask = np.full((37, 100), 255, np.uint8)
    img[10:20, 40:50] = 255          # a bright square, exactly the hole
    mask[10:20, 40:50] = 0
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "wide.png")
    Image.fromarray(mask).save(tmp_path / "wide_mask.png")
    return tmp_path / "wide.png", tmp_path / "wide_mask.png"


def test_inpaint_non_square_image_and_mask_share_one_geometry(tmp_path):
    """Case 1: the 100×37 image and its 100×37 mask get the same crop and resize (--resize crop), so the
    hole stays on its content; without --resize the aspect mismatch is an error, not a silent crop."""
    from vipaint.inpaint import load_pair

    image, mask = _non_square_pair(tmp_path)
    with pytest.raises(ValueError, match=r"100×37 \(W×H\) but 32×32 is needed.*'crop'"):
        load_pair(str(image), str(mask), shape=(1, 32, 32), resize="none", invert=False, binarize=False)
    x, m = load_pair(str(image), str(mask), shape=(1, 32, 32), resize="crop", invert=False, binarize=False)
    hole, bright = m[0] == 0, x[0] > 0.9
    assert x.shape == (1, 32, 32) and m.shape == (1, 32, 32)
    assert int(hole.sum()) > 0 and bool((hole == bright).all())
    with pytest.raises(ValueError, match=r"mask is 50×37 \(W×H\) but the image is 100×37"):
        from PIL import Image

        Image.fromarray(np.full((37, 50), 255, np.uint8)).save(tmp_path / "half.png")
        load_pair(str(image), str(tmp_path / "half.png"), shape=(1, 32, 32), resize="crop", invert=False,
                  binarize=False)


def test_inpaint_16bit_image_keeps_its_range(tmp_path):
    """Case 2 through `vipaint inpaint`'s loader: a 16-bit image is rescaled, not clipped."""
    from PIL import Image

    from vipaint.inpaint import load_pair

    ramp = np.linspace(0, 65535, 32 * 32).round().astype(np.uint16).reshape(32, 32)
    Image.fromarray(ramp).save(tmp_path / "i16.png")
    m = np.full((32, 32), 255, np.uint8)
    m[8:16, 8:16] = 0
    Image.fromarray(m).save(tmp_path / "m.png")
    x, _ = load_pair(str(tmp_path / "i16.png"), str(tmp_path / "m.png"), shape=(1, 32, 32), resize="none",
                     invert=False, binarize=False)
    expect = ramp.astype(np.float64) / 65535 * 2 - 1
    assert np.abs(x[0].numpy() - expect).max() < 1e-5


def _friendly(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv, friendly_errors=True)
    return info.value.code, capsys.readouterr().err


def test_inpaint_refuses_to_overwrite_its_input_before_computing(tmp_path, capsys):
    """Case 6: --out equal to the input image (or its mask) is refused; the input is untouched. The prior
    path does not exist: the check comes before anything is loaded."""
    image, mask = _non_square_pair(tmp_path)
    before = image.read_bytes()
    for out in (image, mask):
        code, err = _friendly(["inpaint", str(image), str(mask), "--prior", str(tmp_path / "no-prior"),
                               "--out", str(out)], capsys)
        assert code == 2 and f"would overwrite the input {out}" in err
    assert image.read_bytes() == before
    code, err = _friendly(["inpaint", str(image), str(mask), "--prior", "x", "--out", str(tmp_path / "r.xyz")], capsys)
    assert code == 2 and "unknown image format '.xyz'" in err


def test_user_errors_are_one_line_with_exit_2_and_tracebacks_on_request(tmp_path, capsys, monkeypatch):
    """Case 9: a user error prints `vipaint <cmd>: error: ...` (no traceback) and exits 2; --debug or
    VIPAINT_DEBUG=1 re-raises it; option errors name the option and its range."""
    image, mask = _non_square_pair(tmp_path)
    code, err = _friendly(["inpaint", str(image), str(tmp_path / "missing.png"), "--prior", "x"], capsys)
    assert code == 2 and "Traceback" not in err
    missing = tmp_path / "missing.png"
    assert err.splitlines()[0] == f"vipaint inpaint: error: FileNotFoundError: mask file '{missing}' does not exist"
    with pytest.raises(FileNotFoundError):
        main(["inpaint", str(image), str(tmp_path / "missing.png"), "--prior", "x", "--debug"], friendly_errors=True)
    monkeypatch.setenv("VIPAINT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["inpaint", str(image), str(tmp_path / "missing.png"), "--prior", "x"], friendly_errors=True)
    monkeypatch.delenv("VIPAINT_DEBUG")
    for flag, value in (("--samples", "0"), ("--iterations", "2.5"), ("--sigma-y", "nan")):
        code, err = _friendly(["inpaint", str(image), str(mask), "--prior", "x", flag, value], capsys)
        assert code == 2 and f"argument {flag}: must be" in err and ">= " in err


def test_wrapped_errors_keep_their_cause():
    from vipaint.cli import describe_error

    try:
        try:
            raise KeyError("weights.safetensors is truncated")
        except KeyError as inner:
            raise ValueError("cannot load the prior") from inner
    except ValueError as err:
        text = describe_error(err)
    assert text == "ValueError: cannot load the prior\n  caused by KeyError: 'weights.safetensors is truncated'"


def test_mask_hints_name_options_the_cli_has(tmp_path):
    """Case 9: the hints for a grey or an inverted mask name --binarize-mask / --invert-mask, which exist."""
    from PIL import Image

    from vipaint.inpaint import build_parser, load_pair

    options = build_parser().format_help()
    assert "--binarize-mask" in options and "--invert-mask" in options
    img = np.zeros((16, 16), np.uint8)
    Image.fromarray(img).save(tmp_path / "i.png")
    grey = np.full((16, 16), 200, np.uint8)
    grey[4:8, 4:8] = 30
    Image.fromarray(grey).save(tmp_path / "grey.png")
    with pytest.raises(ValueError, match="not binary.*--binarize-mask"):
        load_pair(str(tmp_path / "i.png"), str(tmp_path / "grey.png"), shape=(1, 16, 16), resize="none",
                  invert=False, binarize=False)
    _, m = load_pair(str(tmp_path / "i.png"), str(tmp_path / "grey.png"), shape=(1, 16, 16), resize="none",
                     invert=False, binarize=True)
    assert int((m == 0).sum()) == 16
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(ValueError, match="no observed pixel.*--invert-mask"):
        load_pair(str(tmp_path / "i.png"), str(tmp_path / "black.png"), shape=(1, 16, 16), resize="none",
                  invert=False, binarize=False)


def test_damaged_weights_are_not_reported_as_missing(tmp_path, tiny_pixel_prior, capsys):
    """Case 9: a truncated weights file is named as damaged (with its cause), not "not found" with download
    advice."""
    import shutil

    prior = tmp_path / "prior"
    shutil.copytree(tiny_pixel_prior, prior)
    weights = next(prior.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    image, mask = _non_square_pair(tmp_path)
    code, err = _friendly(["inpaint", str(image), str(mask), "--prior", str(prior), "--resize", "crop"], capsys)
    assert code == 2
    assert f"PriorDamagedError: Weights for prior '{prior}': the file {weights} exists but cannot be read" in err
    assert "damaged or truncated" in err and "caused by" in err and "hf download" not in err
