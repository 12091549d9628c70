"""The methods: one file each. Importing this package registers them all."""

from . import baseline, cal, dbgce, herbs, pmg, rams_trans, transfg, wsdan  # noqa: F401
from .base import Explanation, Method, ModelSpec, StepContext, StepOutput

__all__ = ["Method", "ModelSpec", "StepContext", "StepOutput", "Explanation"]
