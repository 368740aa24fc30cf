"""Inverse-problem solvers under one calling convention (see `vipaint.methods.base`).

`METHODS` is the one explicit name → function table used by `vipaint.solve` and the experiment YAML
(`model.method`)."""

from vipaint.methods.base import MethodResult
from vipaint.methods.vipaint import VIPaintConfig, vipaint

METHODS = {
    "vipaint": vipaint,
}

__all__ = ["METHODS", "MethodResult", "VIPaintConfig", "vipaint"]
