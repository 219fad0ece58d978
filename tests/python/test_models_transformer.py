"""ManifoldMixer on torch's own nn.TransformerEncoder, batch-first and sequence-first ([T, B, D]
between the layers), each batch checked by tests/python/invariants.py."""
import pytest
import torch
import torch.nn as nn

from manifold_mixup import ManifoldMixer

from invariants import ModelState, assert_copyable, assert_counters, train_checked

B, F_IN, D, CLASSES = 8, 6, 16, 3


class SequenceClassifier(nn.Module):
    "Float features [B, T, F] -> a 2-layer TransformerEncoder -> mean over time -> logits."

    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(F_IN, D)
        layer = nn.TransformerEncoderLayer(D, nhead=2, dim_feedforward=32, dropout=0.0,
                                           batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(D, CLASSES)

    def forward(self, x):
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)  # [T, B, D], torch's default layout
        h = self.encoder(h)
        return self.head(h.mean(dim=1 if self.batch_first else 0))


def batches(length, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(B, length, F_IN, generator=g),), torch.randint(0, CLASSES, (B,), generator=g), {})
            for _ in range(n)]


# (layout, sequence length): with a length equal to the batch size, only the layer's batch_first
# says which dimension of a [T, B, D] output is the batch; its shape cannot.
LAYOUTS = [(True, 5), (False, 5), (False, B)]


@pytest.mark.parametrize("batch_first,length", LAYOUTS,
                         ids=["batch_first", "sequence_first", "sequence_first_length_equals_batch"])
def test_transformer_encoder_mixes_along_the_batch_dimension(batch_first, length):
    torch.manual_seed(0)
    model = SequenceClassifier(batch_first).train()
    before = ModelState(model)
    mm = ManifoldMixer(model, alpha=1.0, seed=1, verbose=False)
    layers = list(model.encoder.layers)
    data = batches(length)
    check = train_checked(model, mm, data,
                          batch_dims={layer: 0 if batch_first else 1 for layer in layers})
    assert_counters(mm.mixer, len(data))
    before.assert_same_state_dict_keys()
    assert_copyable(model)
    mm.remove()
    before.assert_restored()
    assert_copyable(model)
    # The selection's transformer-layer rule: whole layers, not their insides.
    assert all(any(p is layer for p in mm.modules) for layer in layers), mm.point_names
    assert check.kinds.count("input") < len(data)
