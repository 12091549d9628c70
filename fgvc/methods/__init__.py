"""The methods: one file each. Importing this package registers them all."""

from . import baseline, dbgce, herbs, rams_trans, transfg, wsdan  # noqa: F401
from .base import Explanation, Method, ModelSpec, StepContext, StepOutput

__all__ = ["Method", "ModelSpec", "StepContext", "StepOutput", "Explanation"]
