"""ManifoldMixer on a Hugging Face model in a plain PyTorch loop: a tiny BERT for sequence
classification, built from a config (no download), learns which of three marker tokens a padded
sequence of random tokens holds. Each batch mixes the output of one of the encoder's layers (the
input is token ids, integers, so it is not a point); the loss is the same mix of the two samples'
losses. With --gradient-checkpointing the layers are recomputed in the backward, and mix again.

    python examples/huggingface.py [--steps 150] [--gradient-checkpointing]

(transformers imports torchvision when it is installed, so that torchvision must be one built
for your torch.)
"""
import argparse

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from manifold_mixup import ManifoldMixer

VOCAB, LENGTH, CLASSES = 64, 12, 3  # ids 1..3 are the markers, 0 is padding


def batch(n, generator):
    "Token ids padded with 0 after a random length, each row holding one marker: its label."
    lengths = torch.randint(6, LENGTH + 1, (n,), generator=generator)
    ids = torch.randint(CLASSES + 1, VOCAB, (n, LENGTH), generator=generator)
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    where = (torch.rand(n, generator=generator) * lengths).long()
    ids[torch.arange(n), where] = y + 1
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    return ids * mask, mask, y


def tiny_bert(gradient_checkpointing=False):
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=CLASSES)
    model = BertForSequenceClassification(config)
    if gradient_checkpointing:
        # transformers 5 names it activation_checkpointing_enable (the old name is deprecated)
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    return model


def train(model, steps=150, batch_size=32, alpha=0.4, seed=0, log_every=50):
    "Trains `model` with ManifoldMixer for `steps` batches; returns the mixer (removed)."
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    # The encoder's layers; token ids are integers, not a point. Removed at the end of the block.
    with ManifoldMixer(model, alpha=alpha, input_mixup=False) as mm:
        for step in range(1, steps + 1):
            ids, mask, y = batch(batch_size, g)
            with mm.batch(ids) as xb:  # a mixed position is valid where either sample's is
                logits = model(xb, attention_mask=mm.mix_mask(mask)).logits
                loss = mm.loss(F.cross_entropy, logits, y)
            opt.zero_grad()
            loss.backward()  # under checkpointing: recomputes the layers, the mixed one mixed again
            opt.step()
            if log_every and step % log_every == 0:
                print(f"step {step}  train mixed loss {loss.item():.4f}")
    return mm


def accuracy(model, n=512, seed=1):
    ids, mask, y = batch(n, torch.Generator().manual_seed(seed))
    model.eval()
    with torch.no_grad():
        return (model(ids, attention_mask=mask).logits.argmax(1) == y).float().mean().item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = tiny_bert(args.gradient_checkpointing)
    mixer = train(model, args.steps).mixer
    print(f"held-out accuracy {accuracy(model):.3f}")
    print(f"{mixer.batches} batches: "
          + ", ".join(f"'{n}' mixed {c} times" for n, c in zip(mixer.point_names, mixer.point_mixes))
          + f"; {mixer.unmixed_batches} batches did not mix")
