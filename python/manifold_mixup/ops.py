"""The native ops of manifold_mixup, re-exported with docstrings."""
import torch

from . import _C  # noqa: F401  (loading the extension registers torch.ops.manifold_mixup)

__all__ = ["mix", "patchup"]


def mix(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, noise=None, key=None) -> torch.Tensor:
    """Mix the samples of a batch: ``out[i] = lam[i] * x[i] + (1 - lam[i]) * x[perm[i]]``.

    Args:
        x: float32, float64, float16 or bfloat16 tensor of shape ``[B, ...]`` on CPU or CUDA,
            contiguous or not. It is not modified.
        perm: int64 tensor of shape ``[B]`` holding indices in ``[0, B)`` (usually a
            permutation; any index vector is allowed), on x's device.
        lam: floating tensor of shape ``[B]`` on x's device; broadcast over the other
            dimensions of x. float16 and bfloat16 are mixed with float32 arithmetic.
        noise, key: Noisy Feature Mixup, both or neither: ``noise`` a floating tensor ``[2]``
            (the additive and multiplicative levels) and ``key`` an int64 tensor of one element
            (a Philox key), on x's device. The same pass then makes every element
            ``(1 + noise[1] * u) * out + noise[0] * n``, u uniform on [-1, 1) and n standard
            normal, drawn from Philox at ``key`` (the same numbers on every device; the
            backward draws them again). A level of 0 is not applied: with ``[0, 0]`` this is
            exactly the op without noise. See docs/family.md.

    Returns:
        A new tensor with x's dtype, shape and device; channels_last (or channels_last_3d)
        when x is and there is no noise, else contiguous.

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
    return torch.ops.manifold_mixup.mix(x, perm, lam, noise, key)


def patchup(x: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor, key: torch.Tensor,
            block_size: int = 7, gamma: float = 0.9):
    """PatchUp (Faramarzi et al.) of feature maps: ``(out, mask)`` with
    ``out[i] = (1 - mask) * x[i] + mask * (lam[i] * x[i] + (1 - lam[i]) * x[perm[i]])``.

    Args:
        x: floating tensor ``[B, C, H, W]`` on CPU or CUDA. It is not modified.
        perm, lam: as for `mix`; ``lam`` weighs each sample's own features inside the blocks
            (soft PatchUp: the Beta draws; hard PatchUp: zeros, the blocks are swapped). A row
            whose lam is exactly 1 is copied.
        key: int64 tensor of one element on x's device: the Philox key of the mask.
        block_size: odd side of the blocks (clipped to the largest odd size that fits).
        gamma: the authors' gamma in [0, 1]; each feature is a block centre with probability
            ``gamma * H * W / (k^2 (H - k + 1)(W - k + 1))``, the authors' adjusted gamma.

    Returns:
        ``out`` (x's shape and dtype, contiguous) and ``mask`` (``[C, H, W]``, x's dtype, 1 in
        the blocks), the batch's one mask: the same key gives the same mask on every device.
        ``mask.mean()`` is the changed fraction that weighs PatchUp's targets.

    Differentiable with respect to x and lam. Same as ``torch.ops.manifold_mixup.patchup``;
    docs/family.md has the definition and where it follows the authors' code.
    """
    return torch.ops.manifold_mixup.patchup(x, perm, lam, key, block_size, gamma)
