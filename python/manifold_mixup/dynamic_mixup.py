"""Alias of the reference's second module: `from manifold_mixup.dynamic_mixup import *`."""
from .callbacks import DynamicManifoldMixup, DynamicOutputMixup  # noqa: F401
from fastai.callback.schedule import SchedCos, SchedExp, SchedLin, SchedNo, SchedPoly  # noqa: F401

__all__ = ["DynamicManifoldMixup", "DynamicOutputMixup", "SchedLin", "SchedCos", "SchedNo",
           "SchedExp", "SchedPoly"]
