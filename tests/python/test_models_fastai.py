"""The ManifoldMixup callback on fastai's own vision models in a real Learner: xresnet18 (image
classification) and a DynamicUnet (segmentation, per-pixel loss), each training batch checked by
tests/python/invariants.py from two callbacks placed around ManifoldMixup's."""
import pytest
import torch
from fastai.basics import Callback, CrossEntropyLossFlat, DataLoaders, Learner, SGD

from manifold_mixup import ManifoldMixup

import third_party
from invariants import BatchCheck, ModelState, assert_copyable, assert_counters

pytestmark = pytest.mark.xdist_group("fastai_vision")  # one worker imports fastai.vision once

B = 8


@pytest.fixture(scope="module")
def vision_models():
    third_party.torchvision()  # fastai.vision.models imports torchvision's models
    from fastai.vision.models.unet import DynamicUnet
    from fastai.vision.models.xresnet import xresnet18
    return xresnet18, DynamicUnet


class CheckBefore(Callback):
    "Before ManifoldMixup begins a batch: the plain forward of BatchCheck.before."
    order, run_valid = ManifoldMixup.order - 1, False

    def __init__(self, check, mixup):
        self.check, self.mixup = check, mixup

    def before_batch(self):
        self.check.before(self.mixup.module_list, *self.xb)


class CheckAfter(Callback):
    """Once the loss is computed, inside the batch: BatchCheck.during; after ManifoldMixup ends the
    batch: BatchCheck.after, on the weights the forward had (the optimizer has stepped by then)."""
    order, run_valid = ManifoldMixup.order + 1, False

    def __init__(self, check, mixup):
        self.check, self.mixup = check, mixup

    def after_loss(self):
        self.check.during(self.mixup.mixer, self.mixup.module_list, self.pred, self.loss_grad,
                          *self.yb, keep_weights=True)

    def after_batch(self):
        self.check.after(self.pred)


def dls_of(x, y, n_valid=B):
    train, valid = list(zip(x[n_valid:], y[n_valid:])), list(zip(x[:n_valid], y[:n_valid]))
    return DataLoaders.from_dsets(train, valid, bs=B, shuffle=False)


def fit_checked(model, dls, batches, loss_func=None):
    "One epoch of `batches` training batches under ManifoldMixup, each checked; the callback."
    mixup = ManifoldMixup(alpha=1.0, verbose=False)
    check = BatchCheck(model)
    learn = Learner(dls, model, loss_func=loss_func or CrossEntropyLossFlat(), opt_func=SGD, lr=0.01,
                    cbs=[mixup, CheckBefore(check, mixup), CheckAfter(check, mixup)])
    before = ModelState(model)
    learn.fit(1)
    assert check.batches == batches
    assert_counters(mixup.mixer, batches)
    before.assert_restored()  # at the end of the fit, nothing of ours is left on the model
    assert_copyable(model)
    return mixup, check


def test_xresnet18_mixes_at_its_resblocks(vision_models):
    xresnet18, _ = vision_models
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4 * B, 3, 32, 32, generator=g), torch.randint(0, 10, (4 * B,), generator=g)
    model = xresnet18(n_out=10)
    mixup, check = fit_checked(model, dls_of(x, y), batches=3)
    assert mixup.module_list and all(type(m).__name__ == "ResBlock" for m in mixup.module_list)


def test_dynamic_unet_mixes_at_its_unet_blocks_with_a_per_pixel_loss(vision_models):
    xresnet18, DynamicUnet = vision_models
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(*list(xresnet18(widen=0.25).children())[:-4])  # the body, no head
    model = DynamicUnet(encoder, n_out=3, img_size=(32, 32))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4 * B, 3, 32, 32, generator=g)
    masks = torch.randint(0, 3, (4 * B, 32, 32), generator=g)
    mixup, check = fit_checked(model, dls_of(x, masks), batches=3,
                               loss_func=CrossEntropyLossFlat(axis=1))
    assert mixup.module_list and all(type(m).__name__ == "UnetBlock" for m in mixup.module_list)
