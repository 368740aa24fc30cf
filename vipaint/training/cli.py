"""`vipaint fit --config experiments/priors/<name>.yaml [overrides]`: train and export a prior.

Built on `LightningCLI(run=False)`: the YAML holds `model` (class_path/init_args of a trainer module
such as `vipaint.training.ddpm.DDPMTrainer` or `vipaint.training.autoencoder.AutoencoderTrainer`),
`data` (a LightningDataModule) and `trainer` sections, plus three top-level keys added here:

- `ckpt_path`: checkpoint to resume from. `null` (default) resumes automatically from
  `<trainer.default_root_dir>/checkpoints/last.ckpt` when it exists, so rerunning the same command
  continues an interrupted run; `last` asks for it explicitly; `none` forces a fresh start.
- `export_dir`: after `fit`, the module's `export(export_dir, datamodule)` writes the diffusers-style
  folder (e.g. `data/priors/fashion_mnist`). `null` skips the export.
- `checkpoint_every_n_steps`: period of the `ModelCheckpoint` callback added here (always `last.ckpt`).

Checkpoints are resumed with `Trainer.fit(..., weights_only=True)`: `torch.load` may rebuild only
tensors and plain containers, no pickled code. Exported weights are safetensors. Every setting runs
unchanged on CPU or GPU (`accelerator: auto`); override for CPU, e.g. `--trainer.max_steps 200`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here ever needs the Hub

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser

from vipaint.lightning_cli import build_cli

__all__ = ["main", "add_prior_arguments", "resolve_ckpt_path"]


def add_prior_arguments(parser: LightningArgumentParser) -> None:
    """The resume/export/checkpoint arguments of prior training."""
    parser.add_argument("--ckpt_path", type=str | None, default=None,
                        help="resume checkpoint: null = <root>/checkpoints/last.ckpt if present, 'last', 'none', "
                             "or a path")
    parser.add_argument("--export_dir", type=str | None, default=None, help="diffusers-style output folder after fit")
    parser.add_argument("--checkpoint_every_n_steps", type=int, default=500, help="period of last.ckpt")
    parser.add_argument("--num_threads", type=int | None, default=None, help="torch.set_num_threads on CPU")


def resolve_ckpt_path(ckpt_path: str | None, root_dir: str | Path) -> str | None:
    """Resume rule: explicit path wins; None/'last' → `<root>/checkpoints/last.ckpt` if present; 'none' → None."""
    last = Path(root_dir) / "checkpoints" / "last.ckpt"
    if ckpt_path is None or ckpt_path == "last":
        if last.is_file():
            return str(last)
        if ckpt_path == "last":
            print(f"[vipaint fit] --ckpt_path last: {last} not found, starting from scratch", file=sys.stderr)
        return None
    if ckpt_path.lower() == "none":
        return None
    return ckpt_path


def main(argv: list[str] | None = None) -> None:
    """Entry point for `vipaint fit ...`; `argv` are the arguments after `fit`."""
    cli = build_cli(
        None if argv is None else list(argv),
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        add_arguments=add_prior_arguments,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"accelerator": "auto", "devices": 1},
        parser_kwargs={"default_env": True},
        seed_everything_default=0,
        auto_configure_optimizers=False,
    )
    cfg = cli.config
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    trainer = cli.trainer
    root = Path(trainer.default_root_dir)
    # Lightning adds a default ModelCheckpoint (dirpath=None) when none is configured: replace it with
    # the one resumable checkpoint, <root>/checkpoints/last.ckpt, refreshed every N steps.
    for cb in [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath is None]:
        trainer.callbacks.remove(cb)
    if not any(isinstance(cb, ModelCheckpoint) for cb in trainer.callbacks):
        trainer.callbacks.append(ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0,
                                                 every_n_train_steps=int(cfg.checkpoint_every_n_steps)))
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), root)
    if ckpt is not None:
        print(f"[vipaint fit] resuming from {ckpt}", file=sys.stderr)
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True)
    # the final state, so a rerun only re-exports
    trainer.save_checkpoint(root / "checkpoints" / "last.ckpt", weights_only=False)
    export_dir = cfg.get("export_dir")
    if export_dir and trainer.is_global_zero:
        out = cli.model.export(export_dir, cli.datamodule)
        print(f"[vipaint fit] exported to {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fit":  # `python -m vipaint.training.cli fit ...`
        del sys.argv[1]
    main()
