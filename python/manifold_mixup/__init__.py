"""Manifold Mixup for PyTorch and fastai, with the mixing done in native code on libtorch.

Any PyTorch training loop: `ManifoldMixer(model)` and `OutputMixer()` (see their help).
fastai: `from manifold_mixup import *` gives the callbacks (ManifoldMixup, OutputMixup,
DynamicManifoldMixup, DynamicOutputMixup), ManifoldMixupModule and non_mixable_module_types.
The ops `mix` and `patchup` (torch.ops.manifold_mixup.*) and the mixers need only torch; the
callbacks need fastai.
"""
import torch  # noqa: F401  (libtorch must be loaded before the extension)

from ._version import __version__, check_torch as _check_torch

_check_torch()  # before _C: the wrong torch would fail there with an undefined symbol
from . import _C  # noqa: E402
from .mixers import ManifoldMixer, OutputMixer  # noqa: E402
from .ops import mix, patchup  # noqa: E402
from .selection import ManifoldMixupModule, non_mixable_module_types  # noqa: E402

__all__ = ["ManifoldMixup", "OutputMixup", "DynamicManifoldMixup", "DynamicOutputMixup",
           "ManifoldMixupModule", "non_mixable_module_types", "mix", "patchup", "ManifoldMixer",
           "OutputMixer"]

_CALLBACKS = {"ManifoldMixup", "OutputMixup", "DynamicManifoldMixup", "DynamicOutputMixup"}


def __getattr__(name):
    # The callbacks import fastai, which C/C++ users of the op may not have: load on first use.
    if name in _CALLBACKS:
        from . import callbacks
        return getattr(callbacks, name)
    raise AttributeError(f"module 'manifold_mixup' has no attribute {name!r}")
