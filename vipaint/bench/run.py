"""Run the methods of a benchmark spec through the same Lightning predict path as `vipaint predict`.

Every method writes into `<out>/<method>/` (so an interrupted benchmark resumes); a complete fresh run
of a method also writes its wall-clock time per image to `<out>/<method>/timing.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

__all__ = ["build_cli", "read_timing", "run_methods"]


def build_cli(config: str, overrides: list[str]):
    """The LightningCLI of `vipaint predict` for the experiment YAML `config` plus `overrides`, built
    without running (`run=False`), without a logger and with gradients enabled in predict."""
    from vipaint.lightning_cli import build_cli as build_lightning_cli

    return build_lightning_cli(["--config", config, *overrides, "--trainer.logger=false"], run=False,
                               trainer_defaults={"inference_mode": False}, save_config_callback=None)


def run_methods(spec: dict, out: Path) -> dict[str, dict]:
    """Run every method of the spec; returns {method: its `read_timing`}."""
    from vipaint.writer import PredictionWriter

    cli = build_cli(spec["config"], [str(o) for o in spec.get("overrides", [])])
    writer = next(cb for cb in cli.trainer.callbacks if isinstance(cb, PredictionWriter))
    if not spec.get("fid", True):
        writer.fid = False                    # `fid: false` specs skip the Inception features while predicting
    timings: dict[str, dict] = {}
    for name, opts in spec["methods"].items():
        method = (opts or {}).pop("method", name) if isinstance(opts, dict) else name
        cli.model.method, cli.model.method_options = method, dict(opts or {})
        cli.model.hparams.method = method
        writer.template = str(out / name)
        writer.set_output_dir(out / name)
        before = len(list((writer.output_dir / "metrics").glob("*.json")))
        t0 = time.perf_counter()
        cli.trainer.predict(cli.model, cli.datamodule, return_predictions=False)
        seconds = time.perf_counter() - t0
        computed = len(list((writer.output_dir / "metrics").glob("*.json"))) - before
        tfile = writer.output_dir / "timing.json"
        if computed > 0 and before == 0:      # a complete fresh run: its time per image is meaningful
            tfile.write_text(json.dumps({"seconds": seconds, "images": computed,
                                         "seconds_per_image": seconds / computed,
                                         "threads": torch.get_num_threads(),
                                         "device": str(cli.model.device)}))
        timings[name] = read_timing(writer.output_dir)
    return timings


def read_timing(method_dir: Path) -> dict:
    """The `timing.json` of a complete fresh run of a method ({} if its images came from several runs)."""
    tfile = method_dir / "timing.json"
    return json.loads(tfile.read_text()) if tfile.exists() else {}
