"""ManifoldMixer in a plain PyTorch loop (no fastai) on scikit-learn's digits: each batch mixes
the input or one residual block, and the loss is the same mix of the two samples' losses."""
import torch
import torch.nn.functional as F

from manifold_mixup import ManifoldMixer

from _digits import digits, residual_cnn

torch.manual_seed(0)
(x_train, y_train), (x_valid, y_valid) = digits()
model = residual_cnn()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
epochs, bs = 8, 64
mm = ManifoldMixer(model, alpha=0.4)  # the residual blocks (by class name) and the input

for epoch in range(epochs):
    model.train()
    order = torch.randperm(len(x_train))
    for i in range(0, len(order), bs):
        idx = order[i:i + bs]
        mm.alpha = 0.4 * min(1.0, (epoch + 1) / 2)  # any schedule: here a two-epoch warm-up
        with mm.batch(x_train[idx]) as xb:
            loss = mm.loss(F.cross_entropy, model(xb), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x_valid)
    print(f"epoch {epoch + 1}  train mixed loss {loss.item():.4f}  "
          f"val loss {F.cross_entropy(logits, y_valid).item():.4f}  "
          f"val accuracy {(logits.argmax(1) == y_valid).float().mean().item():.3f}")
mm.remove()

mixer = mm.mixer
print(f"{mixer.batches} batches: input mixed {mixer.input_mixes} times, "
      + ", ".join(f"module '{n}' {c} times" for n, c in zip(mixer.point_names, mixer.point_mixes))
      + f"; {mixer.unmixed_batches} batches did not mix")
