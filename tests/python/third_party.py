"""Other libraries' models for the tests (timm, Hugging Face transformers, fastai.vision), importable
beside a torchvision whose compiled ops do not load.

A torchvision built for another torch (a CUDA wheel beside CPU torch) fails at import: its
_meta_registrations registers fake kernels for torchvision::nms and torchvision::qnms, two
operators its compiled library would have defined. timm, transformers and fastai.vision all
import torchvision. `torchvision()` imports it, and only when the import fails for that reason
defines the two schemas (no kernel: calling nms stays an error) and imports it again. Nothing
else in the process changes. Each getter returns the module, or skips the calling test when the
library is not installed.
"""
import importlib
import importlib.util
import sys

import pytest
import torch

_MISSING_OPS = ("torchvision::nms", "torchvision::qnms")
_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def _import_torchvision():
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as e:
        if not any(f"operator {op} does not exist" in str(e) for op in _MISSING_OPS):
            raise
    # The failed import left half-initialised modules behind; forget them before the retry.
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    for op in _MISSING_OPS:
        if not _defined(op):
            torch.library.define(op, _SCHEMA)
    return importlib.import_module("torchvision")


def _defined(op):
    namespace, name = op.split("::")
    return hasattr(getattr(torch.ops, namespace), name)


def torchvision():
    "torchvision, importable even where its compiled ops are not (see the module's docstring)."
    if not _installed("torchvision"):
        pytest.skip("torchvision is not installed")
    return _import_torchvision()


def timm():
    "timm (it imports torchvision)."
    if not _installed("timm"):
        pytest.skip("timm is not installed")
    torchvision()
    return importlib.import_module("timm")


def transformers():
    "Hugging Face transformers (its image utilities import torchvision when it is installed)."
    if not _installed("transformers"):
        pytest.skip("transformers is not installed")
    if _installed("torchvision"):
        torchvision()
    return importlib.import_module("transformers")


def fastai_vision():
    "fastai.vision.all (it imports torchvision)."
    torchvision()
    return importlib.import_module("fastai.vision.all")


def _installed(name):
    return name in sys.modules or importlib.util.find_spec(name) is not None
