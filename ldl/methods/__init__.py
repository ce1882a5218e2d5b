"""One file per method, each holding its whole math; importing this package registers them."""
from ldl.methods import distill, eac, label_smoothing, ldlva, ovr, rul, scn, slm_aea  # noqa: F401
from ldl.methods.base import METHODS, Method, MethodContext, StepOutput, build_method, register_method

__all__ = ["METHODS", "Method", "MethodContext", "StepOutput", "build_method", "register_method"]
