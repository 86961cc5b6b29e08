"""Reward-level scalarizers: combine raw rewards into one score per completion."""

from morl.scalarize.base import Scalarizer, fill_not_applicable
from morl.scalarize.linear import Linear
from morl.scalarize.tchebycheff import SmoothTchebycheff, Tchebycheff

__all__ = ["Linear", "Scalarizer", "SmoothTchebycheff", "Tchebycheff", "fill_not_applicable"]
