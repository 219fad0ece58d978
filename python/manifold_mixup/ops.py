"""The native ops of manifold_mixup, re-exported with docstrings."""
import torch

from . import _C  # noqa: F401  (loading the extension registers torch.ops.manifold_mixup)

__all__ = ["mix"]


def mix(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Mix the samples of a batch: ``out[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]``.

    Args:
        x: float32, float64, float16 or bfloat16 tensor of shape ``[B, ...]`` on CPU or CUDA,
            contiguous or not. It is not modified.
        perm: int64 tensor of shape ``[B]`` holding indices in ``[0, B)`` (usually a
            permutation; any index vector is allowed), on x's device.
        lam: floating tensor of shape ``[B]`` on x's device; broadcast over the other
            dimensions of x. float16 and bfloat16 are mixed with float32 arithmetic.

    Returns:
        A new tensor with x's dtype, shape and device; channels_last (or channels_last_3d)
        when x is, else contiguous.

    A row whose ``lam[i]`` is exactly 1 (once converted to the arithmetic's dtype: float32, or
    float64 for float64 x) is ``x[i]`` copied, bit for bit: ``x[perm[i]]`` is not read, so an
    inf or NaN in another row cannot leak in through ``0 * inf``. Likewise in the backward a
    row k with ``lam[k] == 1`` passes nothing to ``perm[k]``: with lam all ones the gradient
    is copied through unchanged. (Under torch.compile every mixup point calls this op with lam
    all ones but at the point that mixes.) The gradient with respect to lam stays
    ``sum(grad[i] * (x[i] - x[perm[i]]))``, at ``lam[i] == 1`` too.

    Differentiable with respect to ``x`` and ``lam`` (the backward is native C++,
    deterministic, without atomic adds). Bad arguments raise ``RuntimeError`` naming the
    argument. On the CPU an index of perm outside ``[0, B)`` is such an error; on CUDA the
    values of perm are on the GPU, and the kernel that finds a bad one trips a device-side
    assert instead: the next synchronising CUDA call raises "device-side assert triggered"
    and the process's CUDA context is unusable from then on (as with torch's own indexing).
    Same as ``torch.ops.manifold_mixup.mix``.
    """
    return torch.ops.manifold_mixup.mix(x, perm, lam)
