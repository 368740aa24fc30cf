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
Run `vipaint <command> --help` for the options of a command. A user error is printed as one line (exit
status 2); add --debug (or set VIPAINT_DEBUG=1) for its traceback."""


def _env_defaults() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")      # never ask for a key; `wandb sync` later
    os.environ.setdefault("HF_HUB_OFFLINE", "1")         # fail fast instead of retrying a hub
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_SILENT", "true")


def _predict(argv: list[str]) -> None:
    build_cli(argv, trainer_defaults={"inference_mode": False, "logger": False},
              save_config_kwargs={"overwrite": True}, parser_kwargs={"default_env": True})


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that report a problem with the user's input, files or settings (shown as one line),
    as opposed to bugs (shown with their traceback)."""
    from vipaint.convert.io import CheckpointLoadError
    from vipaint.writer import SettingsMismatchError

    return (ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
            CheckpointLoadError, SettingsMismatchError)


def describe_error(err: BaseException) -> str:
    """`Type: message`, followed by the chain of causes that the message does not already show."""
    text = f"{type(err).__name__}: {err}"
    cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    seen = {id(err)}
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if str(cause) and str(cause) not in text:
            text += f"\n  caused by {type(cause).__name__}: {cause}"
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return text


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("VIPAINT_DEBUG", "").strip() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None, *, friendly_errors: bool | None = None) -> None:
    """Run a command. `friendly_errors` (default: True when `argv` is None, i.e. when started as a program)
    prints a user error as one line and exits with status 2; `--debug` or VIPAINT_DEBUG=1 shows the traceback
    instead. Bugs keep their traceback. Called from Python with `argv`, exceptions propagate."""
    if friendly_errors is None:
        friendly_errors = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    if not friendly_errors or debug:
        _dispatch(argv)
        return
    try:
        _dispatch(argv)
    except _user_error_types() as err:
        cmd = argv[0] if argv else ""
        print(f"vipaint {cmd}: error: {describe_error(err)}\n(run with --debug or VIPAINT_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _dispatch(argv: list[str]) -> None:
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
