// The manifold_mixup::patchup op (PatchUp, Faramarzi et al., AAAI 2022), as seen from C++ hosts.
//
//   out[i] = (1 - M) * x[i] + M * (lam[i] * x[i] + (1 - lam[i]) * x[perm[i]])
//
// for feature maps x [B, C, H, W], with M [C, H, W] the block mask of the batch, shared by its
// samples and drawn in the op: each feature is a block centre with probability p, and M is 1 on
// every feature within block_size // 2 of a centre in the same channel (a max-pool of the
// centres with a block_size window, stride 1, as the authors' code draws it). Soft PatchUp
// passes its Beta draws as lam; hard PatchUp passes lam = 0, so that the blocks are swapped.
// A row whose lam is exactly 1 is x[i] copied (x[perm[i]] is not read).
//
// The draw: p = gamma * H * W / (k^2 * (H - k + 1) * (W - k + 1)), clamped to [0, 1], the
// authors' adjustment of gamma (they assume H == W), with k = block_size, or the largest odd
// size that fits in min(H, W) when block_size does not. Centre (c, h, w) is drawn from
// Philox4x32-10 keyed by `key` at counter (c * H + h) * W + w, the same on every device, so a
// key gives the same mask on the CPU and on CUDA, and the backward needs no stored noise.
//
// Returns (out, M): out with x's shape and dtype (contiguous), M [C, H, W] in x's dtype, 1 in
// the blocks. The fraction of features in the blocks, M.mean(), weighs the targets (see
// Mixer::target_weights). Differentiable with respect to x and lam.
#pragma once

#include <ATen/core/PhiloxRNGEngine.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <tuple>

#include "../export.h"

namespace manifold_mixup {

MM_CORE_API std::tuple<at::Tensor, at::Tensor> patchup(const at::Tensor& x, const at::Tensor& perm,
                                                       const at::Tensor& lam, const at::Tensor& key,
                                                       int64_t block_size, double gamma);

namespace detail {

// What every backend needs to draw a batch's mask, computed on the host from the sizes.
struct PatchUpGeometry {
  int64_t channels = 0, height = 0, width = 0;
  int64_t radius = 0;       // (effective block size) / 2
  double p = 0;             // the probability of a block centre
  uint64_t threshold = 0;   // a centre where a 32-bit Philox draw is below it: p * 2^32
};

// Checks (naming the argument and what was expected; ArgumentError) shared by every backend,
// Meta included: x floating [B, C, H, W]; perm int64 [B], lam floating [B] and key int64 of one
// element, all on x's device; block_size odd >= 1; gamma in [0, 1].
MM_CORE_API void check_patchup_args(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                        const at::Tensor& key, int64_t block_size, double gamma);
MM_CORE_API PatchUpGeometry patchup_geometry(const at::Tensor& x, int64_t block_size, double gamma);

// patchup for a CUDA torch without nvcc (cuda/patchup_kernel_aten.cpp): the mask drawn by the
// CPU kernel, the blend in ATen ops on x's device. Any device, so that its tests run on the CPU.
MM_CORE_API std::tuple<at::Tensor, at::Tensor> patchup_aten(const at::Tensor& x, const at::Tensor& perm,
                                                            const at::Tensor& lam, const at::Tensor& key,
                                                            int64_t block_size, double gamma);

// Whether feature `index` (= (c * H + h) * W + w) is a block centre.
C10_HOST_DEVICE inline bool patchup_centre(uint64_t key, uint64_t index, uint64_t threshold) {
  at::Philox4_32 rng(key, index, 0);
  return static_cast<uint64_t>(rng()) < threshold;
}

}  // namespace detail
}  // namespace manifold_mixup
