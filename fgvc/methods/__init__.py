"""The methods: one file each. Importing this package registers them all.

:mod:`.registry` names them (and imports none of them), :mod:`.factory` builds them, :mod:`.base` is the
contract every method follows, :mod:`.ops` and :mod:`.vit` hold what several methods share.
"""

from . import baseline, cal, dbgce, herbs, pmg, rams_trans, transfg, wsdan  # noqa: F401  (registers them)
from .base import Explanation, Method, ModelSpec, StepContext, StepOutput
from .factory import create_model, create_model_from_config, validate_config
from .registry import get_method, list_methods, method_config, register_method

__all__ = ["Method", "ModelSpec", "StepContext", "StepOutput", "Explanation", "create_model",
           "create_model_from_config", "validate_config", "get_method", "list_methods", "method_config",
           "register_method"]
