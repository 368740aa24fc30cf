"""Priors behind one interface (ε-prediction, ᾱ schedule, codec)."""

from vipaint.priors.analytic import (
                                     GaussianMixture,
                                     GaussianMixturePrior,
                                     GaussianPrior,
                                     SyntheticMixturePrior,
                                     smooth_covariance,
)
from vipaint.priors.base import Prior
from vipaint.priors.denoisers import ClassEmbedder
from vipaint.priors.diffusers_prior import DiffusersPrior, PriorNotFoundError

__all__ = ["Prior", "GaussianPrior", "GaussianMixturePrior", "SyntheticMixturePrior", "GaussianMixture",
           "smooth_covariance", "DiffusersPrior", "PriorNotFoundError", "ClassEmbedder"]
