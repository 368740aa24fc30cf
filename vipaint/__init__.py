"""vipaint: variational posterior inference for image inverse problems with diffusion priors."""

__version__ = "0.1.0"

from vipaint import operators, priors
from vipaint.api import solve, solve_full

__all__ = ["solve", "solve_full", "priors", "operators", "__version__"]
