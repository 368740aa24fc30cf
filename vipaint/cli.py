"""Command line: `vipaint predict --config experiments/<name>.yaml [--overrides]` (LightningCLI),
`vipaint fit --config experiments/priors/<name>.yaml` (prior training) and
`vipaint inpaint IMAGE MASK --prior DIR --out result.png` (one image)."""

from __future__ import annotations

import os
import sys

from vipaint.lightning_cli import build_cli

__all__ = ["main"]

USAGE = """usage: vipaint {predict,fit,inpaint} ...

  predict --config experiments/<name>.yaml [--model.n_samples 8 ...]   run a method over a dataset
  fit --config experiments/priors/<name>.yaml                          train a small prior
  inpaint IMAGE MASK --prior DIR --out result.png                      inpaint one image
  convert-ldm CKPT --config cin256-v2 --out DIR                        convert a CompVis LDM checkpoint
Run `vipaint <command> --help` for the options of a command."""


def _env_defaults() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")      # never ask for a key; `wandb sync` later
    os.environ.setdefault("HF_HUB_OFFLINE", "1")         # fail fast instead of retrying a hub
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_SILENT", "true")


def _predict(argv: list[str]) -> None:
    build_cli(argv, trainer_defaults={"inference_mode": False, "logger": False},
              save_config_kwargs={"overwrite": True}, parser_kwargs={"default_env": True})


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _env_defaults()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "fit":
        from vipaint.training.cli import main as fit_main

        fit_main(rest)
    elif cmd == "inpaint":
        from vipaint.inpaint import main as inpaint_main

        inpaint_main(rest)
    elif cmd == "convert-ldm":
        from vipaint.convert.ldm import main as convert_main

        convert_main(rest)
    elif cmd == "predict":
        _predict(argv)
    else:
        print(f"vipaint: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
