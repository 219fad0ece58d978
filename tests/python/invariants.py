"""What a mixer must do to a real model, checked batch by batch from the outside.

The checks see only what any user sees: the model's modules, the mixer's public state (`lam`,
`perm`, `chosen`, `mixed`, the counters) and forward hooks of their own. They never look at how
the mixup points are implemented, so they hold for per-batch hooks and for points that live as
long as the mixer alike. They need a deterministic model (no dropout) so that two forwards of
one batch agree.

One training batch, in any loop (plain PyTorch, a fastai Learner, a LightningModule)::

    check = BatchCheck(model, forward)      # model: what the mixer was given
    check.before(points, x)                 # a plain forward outside the batch: h at every point
    with mm.batch(x) as xb:                 # (the test's recording hooks see the batch's forward)
        out = forward(xb)
        loss = mm.loss(F.cross_entropy, out, y)
        check.during(mm.mixer, points, out, loss, y)   # chosen point, upstream points, input, loss
    loss.backward()
    check.after(out)                        # the output equals a forward mixed by the test itself

and around the whole run, `ModelState(model)` before the mixer and `.assert_restored()` after
`remove()`: no hook, class, instance attribute or state_dict key of ours is left behind.
"""
import copy
import io
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.testing import assert_close

from manifold_mixup import _C

INPUT_POINT, NO_POINT = _C.Mixer.INPUT_POINT, _C.Mixer.NO_POINT

# What the mixing op may differ by from the plain expression (its own float32 arithmetic), and
# what a whole forward may differ by after that difference has gone through the layers.
POINT_TOL = dict(rtol=1e-5, atol=1e-5)
OUTPUT_TOL = dict(rtol=1e-4, atol=1e-5)


# -- outputs -------------------------------------------------------------------------------------
def tensors_of(output):
    """The tensors of a module's output, in order: a tensor, or those of a tuple, list, dict or
    ModelOutput (one level deep). The first one is the hidden state a mixup point mixes."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):  # ModelOutput is an OrderedDict
        return [v for v in output.values() if isinstance(v, torch.Tensor)]
    if isinstance(output, (tuple, list)):
        return [v for v in output if isinstance(v, torch.Tensor)]
    return []


def with_first_tensor(output, new):
    "`output` with its first tensor replaced by `new` (the same container type)."
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, dict):
        key = next(k for k, v in output.items() if isinstance(v, torch.Tensor))
        items = dict(output)
        items[key] = new
        return type(output)(**items) if type(output) is not dict else items
    i = next(i for i, v in enumerate(output) if isinstance(v, torch.Tensor))
    replaced = list(output[:i]) + [new] + list(output[i + 1:])
    return type(output)(replaced) if not hasattr(output, "_fields") else type(output)(*replaced)


def batch_dim_of(h, batch_size, known=None):
    """The batch dimension of a point's output: `known` when the test knows it (a sequence-first
    output whose length equals the batch size), else 0, or 1 for a sequence-first [T, B, ...]."""
    if known is not None:
        assert h.shape[known] == batch_size, (tuple(h.shape), known, batch_size)
        return known
    if h.dim() >= 1 and h.shape[0] == batch_size:
        return 0
    if h.dim() >= 2 and h.shape[1] == batch_size:
        return 1
    raise AssertionError(f"an output of shape {tuple(h.shape)} has no dimension of the batch size "
                         f"{batch_size}: it cannot be a mixup point")


def mix_reference(h, lam, perm, dim=0):
    "lam * h + (1 - lam) * h[perm] along `dim`, in plain torch."
    shape = [1] * h.dim()
    shape[dim] = -1
    w = lam.to(h.dtype).view(shape)
    return w * h + (1 - w) * h.index_select(dim, perm)


def mixed_cross_entropy_reference(logits, y, lam, perm):
    """lam * CE(logits, y) + (1 - lam) * CE(logits, y[perm]), per sample (per pixel for [B, C, H, W]
    logits and [B, H, W] targets), then the mean: what the mixed loss must be."""
    own = F.cross_entropy(logits, y, reduction="none")
    other = F.cross_entropy(logits, y[perm], reduction="none")
    w = lam.to(own.dtype).view(-1, *[1] * (own.dim() - 1))
    return (w * own + (1 - w) * other).mean()


# -- the model as the mixer found it -------------------------------------------------------------
_MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                      "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
                      "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
                      "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _hooks_of(module):
    return {name: list(getattr(module, name, {}).items()) for name in _MODULE_HOOK_DICTS}


def _global_hooks():
    import torch.nn.modules.module as module_py
    return {name: list(value.items()) for name, value in vars(module_py).items()
            if name.startswith("_global_") and isinstance(value, dict)}


def _same_items(a, b):
    return len(a) == len(b) and all(ka == kb and va is vb for (ka, va), (kb, vb) in zip(a, b))


class ModelState:
    """Every module's class, hooks and instance attributes, the global module hooks and the
    state_dict keys, as they were when this was made."""

    def __init__(self, model):
        self.model = model
        self.modules = [(name, m, type(m), _hooks_of(m), set(vars(m)))
                        for name, m in model.named_modules(remove_duplicate=False)]
        self.keys = list(model.state_dict().keys())
        self.global_hooks = _global_hooks()

    def assert_same_state_dict_keys(self):
        assert list(self.model.state_dict().keys()) == self.keys

    def assert_restored(self):
        now = {id(m): m for _, m in self.model.named_modules(remove_duplicate=False)}
        assert set(now) == {id(m) for _, m, *_ in self.modules}, "the model's modules changed"
        for name, m, cls, hooks, attrs in self.modules:
            where = name or "the model"
            assert type(m) is cls, f"{where} is a {type(m).__qualname__}, was a {cls.__qualname__}"
            for kind, items in _hooks_of(m).items():
                assert _same_items(items, hooks[kind]), f"{where}.{kind} changed: {items} != {hooks[kind]}"
            assert set(vars(m)) == attrs, f"{where} gained or lost attributes: {set(vars(m)) ^ attrs}"
        for kind, items in _global_hooks().items():
            assert _same_items(items, self.global_hooks.get(kind, [])), f"global {kind} changed"
        self.assert_same_state_dict_keys()


def assert_copyable(model):
    "copy.deepcopy and torch.save (a whole-module pickle) work, and keep the state_dict keys."
    keys = list(model.state_dict().keys())
    assert list(copy.deepcopy(model).state_dict().keys()) == keys
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert list(torch.load(buffer, weights_only=False).state_dict().keys()) == keys


def assert_counters(mixer, batches):
    "Every training batch mixed once, at a module or at the input, and at least one at a module."
    assert mixer.batches == batches
    assert mixer.unmixed_batches == 0, f"{mixer.unmixed_batches} of {batches} batches did not mix"
    assert sum(mixer.point_mixes) + mixer.input_mixes == batches, (list(mixer.point_mixes), mixer.input_mixes)
    assert sum(mixer.point_mixes) >= 1, "no batch mixed at a module: the test proved nothing about points"
    assert mixer.repeated_calls == 0


@contextmanager
def _buffers_kept(model):
    """A check's own training-mode forward runs on copies of the buffers, so BatchNorm's running
    statistics stay as training left them, and so do their version counters (the batch's
    autograd graph saved them for its backward)."""
    saved = [(m, name, b) for m in model.modules() for name, b in m._buffers.items() if b is not None]
    for m, name, b in saved:
        m._buffers[name] = b.clone()
    try:
        yield
    finally:
        for m, name, b in saved:
            m._buffers[name] = b


@contextmanager
def _weights(saved):
    "The parameters set to `saved` values ([(parameter, value)], or None: as they are) for a while."
    if not saved:
        yield
        return
    current = [p.detach().clone() for p, _ in saved]
    with torch.no_grad():
        for p, value in saved:
            p.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for (p, _), value in zip(saved, current):
                p.copy_(value)


@contextmanager
def _hooked(pairs):
    "Forward hooks of the checks' own on (module, hook) pairs, removed whatever happens."
    handles = [m.register_forward_hook(h) for m, h in pairs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _Recorder:
    "Records, in the order their forwards end, the tensors each of `modules` returned."

    def __init__(self, modules):
        self.modules = list(dict.fromkeys(modules))  # a module named twice is recorded once
        self.calls = []  # (module id, its call number, [tensors])
        self._count = {}

    def hook(self, module, args, output):
        n = self._count.get(id(module), 0)
        self._count[id(module)] = n + 1
        self.calls.append((id(module), n, [t.detach().clone() for t in tensors_of(output)]))

    def pairs(self):
        return [(m, self.hook) for m in self.modules]

    def first(self, module):
        "(position in the order, tensors) of the module's first call, or None."
        return next(((i, ts) for i, (mid, n, ts) in enumerate(self.calls) if mid == id(module) and n == 0), None)


class BatchCheck:
    """Checks one training batch at a time (see the module's docstring).

    model: the module the mixer was given (its input is what the input point mixes).
    forward: calls the model on a batch's inputs and returns the logits, e.g.
        ``lambda ids, mask: model(ids, attention_mask=mask).logits``; default ``model``.
    batch_dims: {module: dim} for points whose batch dimension their shape cannot tell.
    """

    def __init__(self, model, forward=None, batch_dims=None):
        self.model = model
        self.forward = forward or model
        self.batch_dims = {id(m): d for m, d in (batch_dims or {}).items()}
        self.batches = 0
        self.kinds = []  # per batch: "input", the mixed point's name, "unmixed: <name>" or "none"

    def before(self, points, *inputs, **kwargs):
        "Before the batch: a plain training-mode forward records h at every point."
        self.points, self.inputs, self.kwargs = list(points), inputs, kwargs
        assert self.model.training
        reference = _Recorder(self.points)
        with torch.no_grad(), _buffers_kept(self.model), _hooked(reference.pairs()):
            self.plain_out = self.forward(*inputs, **kwargs).detach().clone()
        self.reference = reference
        self.seen = _Recorder(self.points)
        self._recording = _hooked(self.seen.pairs() + [(self.model, self._record_input)])
        self._input_seen = None
        self._recording.__enter__()

    def _record_input(self, module, args, output):
        if self._input_seen is None:
            first = args[0] if args else None
            self._input_seen = first.detach().clone() if isinstance(first, torch.Tensor) else None

    def during(self, mixer, points, pred, loss, y, keep_weights=False):
        """After the batch's forward and loss, inside the batch: the chosen point's output is
        lam * h + (1 - lam) * h[perm], the points that ran before it saw plain data, the input
        point mixed the input, and the loss is the mixed cross-entropy of `pred`."""
        self._recording.__exit__(None, None, None)
        self.batches += 1
        # A loop whose optimizer steps before the batch ends (fastai's) checks `after` on these.
        self.weights = ([(p, p.detach().clone()) for p in self.model.parameters()]
                        if keep_weights else None)
        chosen, mixed = mixer.chosen, mixer.mixed
        lam, perm = mixer.lam.detach().clone(), mixer.perm.clone()
        bs = self.inputs[0].shape[0]
        assert lam.dtype == torch.float32 and lam.shape == (bs,)
        assert perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(bs))
        assert bool(((lam >= 0.5) & (lam <= 1)).all()), lam  # Beta draws folded to max(lam, 1 - lam)
        self.draw = (chosen, mixed, lam, perm, list(points))
        if chosen == INPUT_POINT:
            assert mixed
            assert self._input_seen is not None, "the model was not called inside the batch"
            assert_close(self._input_seen, mix_reference(self.inputs[0], lam, perm), **POINT_TOL)
            self.kinds.append("input")
        elif chosen >= 0:
            module = points[chosen]
            names = {id(m): n for n, m in self.model.named_modules()}
            seen = self.seen.first(module)
            if seen is None or not seen[1]:
                # The chosen point did not run, or returned no tensor: the batch must train on the
                # plain loss, and assert_counters reports it as an unmixed batch.
                assert not mixed, "the chosen point did not run, yet the batch counts as mixed"
                self.kinds.append("unmixed: " + names.get(id(module), type(module).__name__))
            else:
                self._check_point(module, lam, perm)
                assert mixed, "the chosen point ran and returned a tensor, yet the batch did not mix"
                self.kinds.append(names.get(id(module), type(module).__name__))
        else:
            assert chosen == NO_POINT and not mixed
            self.kinds.append("none")
        expected = (mixed_cross_entropy_reference(pred.detach(), y, lam, perm) if mixed
                    else F.cross_entropy(pred.detach(), y))
        assert_close(loss.detach(), expected, **POINT_TOL)

    def _check_point(self, module, lam, perm):
        bs = self.inputs[0].shape[0]
        position, outs = self.seen.first(module)
        ref = self.reference.first(module)
        assert ref is not None, "the chosen point ran in the batch but not in the plain forward"
        h = ref[1]
        dim = batch_dim_of(h[0], bs, self.batch_dims.get(id(module)))
        assert_close(outs[0], mix_reference(h[0], lam, perm, dim), **POINT_TOL)
        for rest_seen, rest_ref in zip(outs[1:], h[1:]):  # the rest of a tuple passes through
            assert_close(rest_seen, rest_ref, **POINT_TOL)
        ref_calls = {(mid, n): ts for mid, n, ts in self.reference.calls}
        for mid, n, ts in self.seen.calls[:position]:  # upstream of the mix: plain data
            for a, b in zip(ts, ref_calls[(mid, n)]):
                assert_close(a, b, **POINT_TOL)

    def after(self, pred):
        """After the batch and its backward (a forward between them would be one more thing the
        test does to the model), before the optimizer step: `pred` (the batch's output) equals a
        forward of the same batch in which the test itself mixes the chosen point's first output
        (or the input), plain torch."""
        chosen, mixed, lam, perm, points = self.draw
        if not mixed:
            assert_close(pred.detach(), self.plain_out, **OUTPUT_TOL)
            return
        inputs = self.inputs
        pairs = []
        if chosen == INPUT_POINT:
            inputs = (mix_reference(inputs[0], lam, perm),) + tuple(inputs[1:])
        else:
            bs, known = inputs[0].shape[0], self.batch_dims.get(id(points[chosen]))
            state = {"done": False}

            def mix_once(module, args, output):
                if state["done"]:
                    return None
                state["done"] = True
                h = tensors_of(output)[0]
                return with_first_tensor(output, mix_reference(h, lam, perm, batch_dim_of(h, bs, known)))
            pairs = [(points[chosen], mix_once)]
        with torch.no_grad(), _buffers_kept(self.model), _weights(self.weights), _hooked(pairs):
            expected = self.forward(*inputs, **self.kwargs)
        assert_close(pred.detach(), expected, **OUTPUT_TOL)


def train_checked(model, mm, batches, forward=None, lr=0.01, loss_fn=F.cross_entropy,
                  batch_dims=None):
    """A plain training loop of `mm` over `batches` ([(inputs tuple, y, forward kwargs)]), each
    batch checked by BatchCheck; returns the checker. The backward runs after the batch, as the
    documented loop has it."""
    check = BatchCheck(model, forward, batch_dims)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    forward = check.forward
    for inputs, y, kwargs in batches:
        check.before(mm.modules, *inputs, **kwargs)
        with mm.batch(*inputs) as xb:
            xb = xb if isinstance(xb, tuple) else (xb,)
            out = forward(*xb, **kwargs)
            loss = mm.loss(loss_fn, out, y)
            check.during(mm.mixer, mm.modules, out, loss, y)
        opt.zero_grad()
        loss.backward()
        check.after(out)
        opt.step()
    return check
