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
        A new tensor with x's dtype, shape and device.

    Differentiable with respect to ``x`` and ``lam`` (the backward is native C++). Bad
    arguments raise ``RuntimeError`` naming the argument. Same as
    ``torch.ops.manifold_mixup.mix``.
    """
    return torch.ops.manifold_mixup.mix(x, perm, lam)
