"""ManifoldMixer in a PyTorch Lightning LightningModule, on scikit-learn's digits (no download).

The mixer lives as long as the fit (made in on_fit_start, removed in on_fit_end); each
training_step is one mixed batch: the input or one residual block is mixed, and the loss is the
same mix of the two samples' losses. Validation calls the model outside any batch: never mixed.

    python examples/lightning_digits.py [--epochs 4]

(Not lightning.py: a script's folder comes first on sys.path, so a lightning.py here would
shadow the lightning package it imports. Lightning's torchmetrics imports torchvision when it
is installed, so that torchvision must be one built for your torch.)
"""
import argparse
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from manifold_mixup import ManifoldMixer

from _digits import digits, residual_cnn


class DigitsClassifier(L.LightningModule):
    def __init__(self, alpha=0.4, lr=3e-3):
        super().__init__()
        self.net, self.alpha, self.lr = residual_cnn(), alpha, lr
        self.mm = None

    def forward(self, x):
        return self.net(x)

    def on_fit_start(self):
        self.mm = ManifoldMixer(self.net, alpha=self.alpha)  # the residual blocks and the input

    def on_fit_end(self):
        self.mm.remove()

    def training_step(self, batch, batch_idx):
        x, y = batch
        with self.mm.batch(x) as xb:
            loss = self.mm.loss(F.cross_entropy, self(xb), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss  # Lightning runs the backward and the step

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log_dict({"val_loss": F.cross_entropy(logits, y),
                       "val_acc": (logits.argmax(1) == y).float().mean()}, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def fit(model, epochs=4, callbacks=(), **trainer_args):
    "Trains `model` on the digits on the CPU; returns the Trainer."
    (x_train, y_train), (x_valid, y_valid) = digits()
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=64, shuffle=True)
    valid = DataLoader(TensorDataset(x_valid, y_valid), batch_size=256)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        callbacks=list(callbacks), **trainer_args)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the data is in memory
        trainer.fit(model, train, valid)
    return trainer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DigitsClassifier()
    trainer = fit(model, epochs=args.epochs, enable_progress_bar=False)
    metrics = {k: round(v.item(), 4) for k, v in trainer.callback_metrics.items()}
    mixer = model.mm.mixer
    print(f"after {args.epochs} epochs: {metrics}")
    print(f"{mixer.batches} batches: input mixed {mixer.input_mixes} times, "
          + ", ".join(f"module '{n}' {c} times" for n, c in zip(mixer.point_names, mixer.point_mixes))
          + f"; {mixer.unmixed_batches} batches did not mix")
