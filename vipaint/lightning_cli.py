"""The one LightningCLI of `vipaint`: `vipaint predict` (`vipaint.cli`), `vipaint fit`
(`vipaint.training.cli`) and the benchmark runner all build it with `build_cli`.

Lightning is imported only when a CLI is built, so importing this module stays cheap (`vipaint --help`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import cache
from typing import Any

__all__ = ["ExplicitArgsMixin", "build_cli"]


class ExplicitArgsMixin:
    """For LightningCLI subclasses given explicit `args`: LightningCLI warns whenever `args` is passed
    while `sys.argv` holds arguments (as it does under `vipaint predict ...`), so hide `sys.argv` while
    those args are parsed, and only then (a DDP launch later re-runs the real `sys.argv`)."""

    def parse_arguments(self, parser, args) -> None:
        if args is None:
            super().parse_arguments(parser, args)  # type: ignore[misc]
            return
        saved = sys.argv
        sys.argv = saved[:1]
        try:
            super().parse_arguments(parser, args)  # type: ignore[misc]
        finally:
            sys.argv = saved


@cache
def _cli_class() -> type:
    """`ExplicitArgsMixin` + LightningCLI, with an optional hook that adds arguments to the parser."""
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    class VIPaintLightningCLI(ExplicitArgsMixin, LightningCLI):
        def __init__(self, *args: Any, add_arguments: Callable[[LightningArgumentParser], None] | None = None,
                     **kwargs: Any) -> None:
            self._extra_arguments = add_arguments  # (LightningCLI owns `_add_arguments`)
            super().__init__(*args, **kwargs)

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            # a tuned YAML of `python -m vipaint.tune` is a config file whose `tuning` records its provenance
            parser.add_argument("--tuning", type=dict | None, default=None,
                                help="provenance of a tuned setting (read by the benchmark runner; no effect)")
            if self._extra_arguments is not None:
                self._extra_arguments(parser)

    return VIPaintLightningCLI


def build_cli(args: list[str] | None, *, model_class: type | None = None, datamodule_class: type | None = None,
              add_arguments: Callable[[Any], None] | None = None, **cli_kwargs: Any) -> Any:
    """Build (and, unless `run=False` is passed, run) the LightningCLI on `args` (None: `sys.argv`).

    `model_class` / `datamodule_class` default to `vipaint.module.VIPaintModule` /
    `vipaint.data.InverseProblemDataModule`; `add_arguments(parser)` adds extra top-level arguments;
    `cli_kwargs` go to `LightningCLI` unchanged (run, trainer_defaults, save_config_kwargs, ...).
    """
    if model_class is None:
        from vipaint.module import VIPaintModule

        model_class = VIPaintModule
    if datamodule_class is None:
        from vipaint.data import InverseProblemDataModule

        datamodule_class = InverseProblemDataModule
    return _cli_class()(model_class, datamodule_class, args=args, add_arguments=add_arguments, **cli_kwargs)
