"""examples/lightning_digits.py: its LightningModule trained by a real Lightning Trainer for a few
batches, each checked by tests/python/invariants.py from a Lightning Callback."""
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import third_party
from invariants import BatchCheck, ModelState, assert_copyable, assert_counters

pytestmark = pytest.mark.xdist_group("lightning")  # one worker imports lightning once

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def example():
    if importlib.util.find_spec("lightning") is None:
        pytest.skip("lightning is not installed")
    if importlib.util.find_spec("torchvision") is not None:
        third_party.torchvision()  # torchmetrics (under lightning) imports torchvision when installed
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module("lightning_digits")
    finally:
        sys.path.remove(str(EXAMPLES))


def checking_callback(L):
    class CheckMixedBatches(L.Callback):
        """Checks every training batch of the module's ManifoldMixer: the plain forward before
        training_step, the checks when training_step asks the mixer for the loss (inside the
        batch), the test's own mixed forward after the backward, before the optimizer step."""

        def setup(self, trainer, pl_module, stage):
            self.state = ModelState(pl_module.net)  # before on_fit_start makes the mixer

        def on_train_start(self, trainer, pl_module):
            mm, self.check = pl_module.mm, BatchCheck(pl_module.net)
            real_loss = mm.loss

            def loss(loss_fn, pred, *targets):  # the real mixed loss, checked once computed
                value = real_loss(loss_fn, pred, *targets)
                self.check.during(mm.mixer, mm.modules, pred, value, *targets)
                self.pred = pred
                return value
            mm.loss = loss

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.check.before(pl_module.mm.modules, batch[0])

        def on_after_backward(self, trainer, pl_module):
            self.check.after(self.pred)

        def on_train_end(self, trainer, pl_module):
            del pl_module.mm.loss

    return CheckMixedBatches()


def test_lightning_module_mixes_each_training_step(example):
    torch.manual_seed(0)
    model = example.DigitsClassifier(alpha=1.0)
    check = checking_callback(example.L)
    example.fit(model, epochs=1, callbacks=[check], limit_train_batches=6, limit_val_batches=1,
                num_sanity_val_steps=0, enable_progress_bar=False)
    assert check.check.batches == 6
    assert_counters(model.mm.mixer, 6)
    check.state.assert_restored()  # on_fit_end removed the mixer
    assert_copyable(model.net)
