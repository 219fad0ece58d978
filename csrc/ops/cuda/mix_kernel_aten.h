// manifold_mixup::mix and _mix_backward (and patchup: patchup_kernel_aten.cpp) composed of ATen ops (index_select, index_add_ and the
// arithmetic): the CUDA kernels of a build without nvcc, which a CUDA torch without the CUDA
// toolkit gets. Slower than the fused kernels (mix_kernel.cu: several passes and temporaries of
// x's size instead of one), with their semantics:
//
//   - a row whose lam is exactly 1 is x's row, unchanged: an inf or NaN in the row it would
//     have gathered cannot leak in through 0 * inf;
//   - in the backward, a source whose (1 - lam) is exactly 0 adds nothing to its target;
//   - arithmetic in x's opmath dtype (float32 for float16, bfloat16 and float32), rounded once
//     to x's dtype; the result in x's memory format when x is channels_last, else contiguous
//     (ops/mix.h);
//   - an index of perm outside [0, B) is never dereferenced: on CUDA it trips the device-side
//     assert of torch's own indexing kernels (index_select in the forward, index_add_ in the
//     backward; a dedicated check when x has no elements per sample), which, like the fused
//     kernels' assert, surfaces at the next synchronisation and leaves the CUDA context unusable.
//     Checking on the host would cost a device sync per batch. With
//     torch.use_deterministic_algorithms(True), index_add_ runs torch's deterministic
//     index_put_, which checks the range on the host and raises an IndexError instead.
//   - with Noisy Feature Mixup's noise and key, the noise of every element is drawn on the host
//     by the CPU kernel, which draws the fused kernels' counter-based numbers (ops/noise.h), and
//     copied over (two tensors of x's size in its opmath dtype: the price of no nvcc); with both levels
//     0 the result is exactly the mix;
//   - the backward is deterministic only under torch.use_deterministic_algorithms(True)
//     (index_add_'s atomics otherwise), where the fused backward always is.
//
// The functions take any device (they are ATen ops), so their tests run on the CPU; they are
// registered as manifold_mixup's CUDA kernels only in a build without the fused ones.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "export.h"

namespace manifold_mixup {
namespace detail {

MM_CORE_API at::Tensor mix_aten(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                                const std::optional<at::Tensor>& noise = std::nullopt,
                                const std::optional<at::Tensor>& key = std::nullopt);
MM_CORE_API at::Tensor mix_backward_aten(const at::Tensor& grad, const at::Tensor& perm, const at::Tensor& lam);

}  // namespace detail
}  // namespace manifold_mixup
