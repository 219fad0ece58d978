"""Manifold Mixup for PyTorch and fastai, with the mixing done in native code on libtorch."""
import torch  # noqa: F401  (libtorch must be loaded before the extension)

from . import _C
from .ops import mix

__version__ = "0.1.0"
