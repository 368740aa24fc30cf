"""Prompts through the data and the command lines: `metadata.jsonl` prompt columns and `data.prompt`,
`vipaint predict` over a folder of images + masks + prompts with a tiny SD pipeline, `vipaint inpaint --prompt`,
and the fast failure for a Stable Diffusion Hub id that is not in the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vipaint.cli import main
from vipaint.data import InverseProblemDataModule, collate
from vipaint.metadata import check_metadata
from vipaint.module import VIPaintModule
from vipaint.priors import DiffusersPrior, PriorNotFoundError

pytest_plugins = ["sd_folders"]


def _folder(root: Path, prompts: list[str | None]) -> Path:
    """RGB 16×16 images + masks (a centred 8×8 hole) + metadata.jsonl with the given prompts (None: no column)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows = []
    for i, p in enumerate(prompts):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
        m = np.full((16, 16), 255, np.uint8)
        m[4:12, 4:12] = 0
        Image.fromarray(m).save(root / "masks" / f"{i:03d}.png")
        row = {"file_name": f"{i:03d}.png", "mask_file_name": f"masks/{i:03d}.png"}
        rows.append(row if p is None else {**row, "prompt": p, "negative_prompt": "blurry"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_prompts_per_item_or_per_run(tmp_path):
    src = _folder(tmp_path / "imgs", ["a red cat", None])
    dm = InverseProblemDataModule(str(src), num_images=None, image_size=16, channels=3, prompt="a house",
                                  cache_dir=str(tmp_path / "cache"))
    dm.setup()
    items = [dm.full_dataset()[k] for k in range(2)]
    assert [(it["prompt"], it["negative_prompt"]) for it in items] == [("a red cat", "blurry"), ("a house", "")]
    batch = collate(items)
    assert batch["prompt"] == ["a red cat", "a house"]


def test_metadata_prompt_must_be_a_string(tmp_path):
    src = _folder(tmp_path / "imgs", ["a cat"])
    (src / "metadata.jsonl").write_text(json.dumps({"file_name": "000.png", "prompt": 3}) + "\n")
    with pytest.raises(ValueError, match="line 1: prompt must be a string"):
        check_metadata(src / "metadata.jsonl")


def test_module_turns_prompts_into_prompt_ids(sd_folders):
    module = VIPaintModule(DiffusersPrior(sd_folders["sd1"]))
    batch = {"index": torch.tensor([0, 1]), "label": torch.tensor([-1, -1]), "prompt": ["a cat", "a dog"],
             "negative_prompt": ["", ""]}
    cond = module.condition(batch, torch.device("cpu"))
    assert cond.tolist() == [0, 1] and module.prior.prompts.strings == ["a cat", "a dog", ""]


def _predict_config(tmp: Path, prior: str, images: Path, out: Path) -> Path:
    cfg = {"seed_everything": 0,
           "model": {"prior": {"class_path": "vipaint.priors.DiffusersPrior", "init_args": {"path": prior}},
                     "method": "vipaint", "n_samples": 1, "seed": 3,
                     "method_options": {"iterations": 2, "n_mc": 1, "refine_steps": 2, "refine_guidance": 2.0}},
           "data": {"source": str(images), "num_images": 2, "image_size": 16, "channels": 3, "batch_size": 2,
                    "cache_dir": str(tmp / "hf-cache")},
           "trainer": {"accelerator": "cpu", "devices": 1, "inference_mode": False, "enable_progress_bar": False,
                       "enable_model_summary": False, "logger": False, "default_root_dir": str(out),
                       "callbacks": [{"class_path": "vipaint.writer.PredictionWriter",
                                      "init_args": {"output_dir": str(out), "fid": False}}]}}
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_predict_over_images_masks_and_prompts(tmp_path, sd_folders):
    """The 512²/1024² protocol's data path at 16²: the run's prompt fills the items without one, and it
    changes their samples, not those of the item with its own prompt."""
    src = _folder(tmp_path / "imgs", ["a red cat", None])
    runs = {}
    for name, prompt in (("a", "a house"), ("b", "a tree")):
        out = tmp_path / name
        main(["predict", "--config", str(_predict_config(tmp_path, sd_folders["sd1"], src, out)),
              f"--data.prompt={prompt}"])
        runs[name] = [np.load(out / "samples" / f"{k:06d}.npz")["samples"] for k in range(2)]
    assert all(np.isfinite(s).all() and s.shape == (1, 3, 16, 16) for s in runs["a"])
    np.testing.assert_allclose(runs["a"][0], runs["b"][0], atol=1e-5)
    assert not np.allclose(runs["a"][1], runs["b"][1])


def test_inpaint_with_a_prompt_on_a_saved_sd_folder(tmp_path, sd_folders, capsys):
    src = _folder(tmp_path / "imgs", [None])
    out = tmp_path / "out" / "result.png"
    main(["inpaint", str(src / "000.png"), str(src / "masks" / "000.png"), "--prior", sd_folders["sd2v"],
          "--prompt", "a red cat", "--negative-prompt", "blurry", "--guidance", "3", "--iterations", "2",
          "--refine-steps", "2", "--samples", "2", "--out", str(out), "--text-device", "cpu"])
    assert out.exists() and np.isfinite(np.load(tmp_path / "out" / "result_samples.npz")["raw"]).all()


def test_inpaint_refuses_a_prompt_for_a_prior_without_text(tmp_path, tiny_pixel_prior):
    src = _folder(tmp_path / "imgs", [None])
    with pytest.raises(ValueError, match="not text-conditioned"):
        main(["inpaint", str(src / "000.png"), str(src / "masks" / "000.png"), "--prior", tiny_pixel_prior,
              "--prompt", "a cat", "--out", str(tmp_path / "r.png")])


def test_inpaint_with_an_uncached_sd_hub_id_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    src = _folder(tmp_path / "imgs", [None])
    with pytest.raises(PriorNotFoundError, match="hf download stabilityai/stable-diffusion-2-1-base"):
        main(["inpaint", str(src / "000.png"), str(src / "masks" / "000.png"), "--prior",
              "stabilityai/stable-diffusion-2-1-base", "--prompt", "a cat", "--out", str(tmp_path / "r.png")])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("name,hub_id", [("sd2_inpaint", "stabilityai/stable-diffusion-2-1-base"),
                                         ("sd35_inpaint", "stabilityai/stable-diffusion-3.5-medium")])
def test_sd_experiments_without_weights_fail_fast_with_instructions(tmp_path, name, hub_id):
    """Offline and without weights the SD experiments stop at the prior, before any data, saying what to
    download (weights and the images + masks + prompts folder) and where to put it."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(root)}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-m", "vipaint.cli", "predict", "--config",
                           str(root / "experiments" / f"{name}.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    err = proc.stderr
    assert "PriorNotFoundError" in err and f"hf download {hub_id}" in err and "--local-dir" in err
    assert str(tmp_path / "hf" / "hub") in err and "metadata.jsonl" in err and "prompt" in err
    assert not (tmp_path / "hf" / "datasets").exists()


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_a_resume_with_other_prompts_stops(tmp_path, tiny_pixel_prior):
    """Prompts determine the results: a rerun into the same folder with another run prompt, or with a
    changed metadata.jsonl prompt, stops instead of mixing results."""
    from vipaint.writer import SettingsMismatchError

    src = _folder(tmp_path / "imgs", ["a red cat", None])
    out = tmp_path / "run"
    cfg = _predict_config(tmp_path, tiny_pixel_prior, src, out)
    text = yaml.safe_load(cfg.read_text())
    text["model"].update(method="dps", method_options={"n_steps": 2})
    text["data"].update(image_size=8, channels=1)
    cfg.write_text(yaml.safe_dump(text))
    main(["predict", "--config", str(cfg), "--data.prompt=a house"])
    rec = json.loads((out / "metrics" / "000000.json").read_text())
    assert rec["prompt"] == "a red cat" and rec["negative_prompt"] == "blurry"
    with pytest.raises(SettingsMismatchError, match="prompt"):
        main(["predict", "--config", str(cfg), "--data.prompt=a tree"])
    meta = (src / "metadata.jsonl").read_text().replace("a red cat", "a blue cat")
    (src / "metadata.jsonl").write_text(meta)
    with pytest.raises(SettingsMismatchError, match="the prompt of dataset index 0"):
        main(["predict", "--config", str(cfg), "--data.prompt=a house"])
