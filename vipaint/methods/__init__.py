"""Inverse-problem solvers under one calling convention (see `vipaint.methods.base`).

`METHODS` is the one explicit name → function table used by `vipaint.solve` and the experiment YAML
(`model.method`)."""

from vipaint.methods.base import MethodResult
from vipaint.methods.copaint import copaint, copaint_tt
from vipaint.methods.ddnm import ddnm
from vipaint.methods.dps import dps
from vipaint.methods.exact import exact
from vipaint.methods.prior import prior_samples
from vipaint.methods.psld import psld
from vipaint.methods.reddiff import reddiff
from vipaint.methods.repaint import repaint
from vipaint.methods.vipaint import VIPaintConfig, vipaint

METHODS = {
    "vipaint": vipaint,
    "dps": dps,
    "psld": psld,
    "repaint": repaint,
    "reddiff": reddiff,
    "ddnm": ddnm,
    "copaint": copaint,
    "copaint_tt": copaint_tt,
    "prior": prior_samples,
    "exact": exact,
}

__all__ = ["METHODS", "MethodResult", "VIPaintConfig", "vipaint", "dps", "psld", "repaint", "reddiff", "ddnm",
           "copaint", "copaint_tt", "prior_samples", "exact"]
