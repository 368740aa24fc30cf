"""vipaint: variational posterior inference for image inverse problems with diffusion priors."""

__version__ = "0.1.0"
