"""ManifoldMixer on timm's resnet18, vit_tiny_patch16_224 and convnext_atto at 32x32, with the
default selection, each batch checked by tests/python/invariants.py."""
import pytest
import torch

from manifold_mixup import ManifoldMixer

import third_party
from invariants import ModelState, assert_copyable, assert_counters, train_checked

pytestmark = pytest.mark.xdist_group("timm")  # one worker imports timm (and torchvision) once

B, CLASSES = 8, 10


@pytest.fixture(scope="module")
def timm():
    return third_party.timm()


def image_batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(B, 3, 32, 32, generator=g),), torch.randint(0, CLASSES, (B,), generator=g), {})
            for _ in range(n)]


# (timm model, its arguments, the class of the blocks the selection must choose)
MODELS = [("resnet18", {}, "BasicBlock"),  # BatchNorm: each forward updates the running stats
          ("vit_tiny_patch16_224", {"img_size": 32}, "Block"),  # [B, 5, 192] tokens between blocks
          ("convnext_atto", {}, "ConvNeXtBlock")]


@pytest.mark.parametrize("name,kwargs,block", MODELS, ids=[m[0] for m in MODELS])
def test_timm_model_mixes_at_its_blocks(timm, name, kwargs, block):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs).train()
    before = ModelState(model)
    mm = ManifoldMixer(model, alpha=1.0, seed=2, verbose=False)
    assert mm.modules and all(type(m).__name__ == block for m in mm.modules), mm.point_names
    data = image_batches(3)
    train_checked(model, mm, data)
    assert_counters(mm.mixer, len(data))
    before.assert_same_state_dict_keys()
    mm.remove()
    before.assert_restored()
    assert_copyable(model)
