"""Run the methods of a benchmark spec through the same Lightning predict path as `vipaint predict`.

Every method writes into `<out>/<method>/` (so an interrupted benchmark resumes); a complete fresh run
of a method also writes its wall-clock time per image to `<out>/<method>/timing.json`; a resumed one is
timed by the mean of its per-index `timing/` files (`read_timing`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from vipaint.run_log import index_seconds

__all__ = ["build_cli", "gpu_device", "read_timing", "run_device", "run_method", "run_methods"]


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
    writer.fid = bool(spec.get("fid", True))       # no Inception in the predict path when the spec skips FID
    writer.save_u8 = bool(spec.get("samples_u8", False))     # uint8 composites to commit beside the metrics
    return {name: run_method(cli, writer, name, dict(opts or {}), out / name)
            for name, opts in spec["methods"].items()}


def run_method(cli, writer, name: str, opts: dict, folder: Path) -> dict:
    """Run one method (options `opts`, `method` defaulting to `name`) of a built CLI into `folder`;
    returns its `read_timing`."""
    method = opts.pop("method", name)
    cli.model.method, cli.model.method_options = method, dict(opts)
    cli.model.hparams.method = method
    writer.template = str(folder)
    writer.set_output_dir(folder)
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
                                     "device": run_device(cli.trainer)}))
    return read_timing(writer.output_dir)


def run_device(trainer) -> str:
    """The device a predict ran on, e.g. `cuda:0 (NVIDIA H200)` (read from the strategy: after predict Lightning
    has moved the module back to the CPU, so the module's device would say `cpu`)."""
    device = trainer.strategy.root_device
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def gpu_device(timing: dict) -> str | None:
    """The GPU a `read_timing` record was measured on, or None for a CPU (or unrecorded) device."""
    device = str(timing.get("device", ""))
    return device if "cuda" in device else None


def read_timing(method_dir: Path) -> dict:
    """Seconds per image of a method's results: the `timing.json` of a complete fresh run; else, for a run
    resumed over several sessions, the mean of the per-index `timing/<index>.json` (batch time / batch size)
    when every index of `metrics/` has one (`"source": "per-index"`); else {}."""
    method_dir = Path(method_dir)
    tfile = method_dir / "timing.json"
    if tfile.exists():
        return json.loads(tfile.read_text())
    seconds = [index_seconds(method_dir, int(f.stem)) for f in (method_dir / "metrics").glob("*.json")]
    if not seconds or None in seconds:
        return {}
    return {"seconds": float(sum(seconds)), "images": len(seconds),
            "seconds_per_image": float(sum(seconds)) / len(seconds), "source": "per-index"}
