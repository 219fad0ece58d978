// CPU kernel of manifold_mixup::patchup (see ops/patchup.h): the batch's block centres drawn
// from Philox, dilated into the block mask (a row pass, then a column pass), then one fused pass
// over the batch that reads each row and its partner once and writes the result once (a plain
// loop the compiler vectorises for the build's CPU).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "errors.h"
#include "ops/patchup.h"

namespace manifold_mixup {
namespace {

constexpr int64_t kGrain = 1 << 15;

// mask[c, h, w] = 1 within `radius` (Chebyshev distance, same channel) of a drawn centre. The
// mask is one per batch, a B-th of the work of the mix: it is drawn on one thread unless it is
// large, so that a batch of small maps pays for no thread hand-off.
std::vector<uint8_t> draw_mask(const detail::PatchUpGeometry& g, uint64_t key) {
  const int64_t hw = g.height * g.width, n = g.channels * hw, r = g.radius;
  constexpr int64_t kMaskGrain = 1 << 18;  // features per task
  std::vector<uint8_t> centre(n), rows(n), mask(n);
  at::parallel_for(0, n, kMaskGrain, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e)
      centre[e] = detail::patchup_centre(key, static_cast<uint64_t>(e), g.threshold);
  });
  // Separable max-pool with padding: over w - r .. w + r, then over h - r .. h + r.
  at::parallel_for(0, g.channels, std::max<int64_t>(1, kMaskGrain / std::max<int64_t>(hw, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t row = begin * g.height; row < end * g.height; ++row) {
      const uint8_t* in = centre.data() + row * g.width;
      uint8_t* out = rows.data() + row * g.width;
      for (int64_t w = 0; w < g.width; ++w) {
        uint8_t any = 0;
        for (int64_t v = std::max<int64_t>(w - r, 0); v <= std::min(w + r, g.width - 1); ++v) any |= in[v];
        out[w] = any;
      }
    }
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t h = 0; h < g.height; ++h) {
        uint8_t* out = mask.data() + c * hw + h * g.width;
        std::memset(out, 0, g.width);
        for (int64_t u = std::max<int64_t>(h - r, 0); u <= std::min(h + r, g.height - 1); ++u) {
          const uint8_t* in = rows.data() + c * hw + u * g.width;
          for (int64_t w = 0; w < g.width; ++w) out[w] |= in[w];
        }
      }
    }
  });
  return mask;
}

// dst = in ? l * a + m * b : a over n elements, both sides computed so that the loop has no
// branch and vectorises (a NaN of b where `in` is 0 is computed and dropped).
template <typename scalar_t, typename opmath_t>
void blend_in_blocks(scalar_t* dst, const scalar_t* a, const scalar_t* b, const scalar_t* in,
                     opmath_t l, opmath_t m, int64_t n) {
  for (int64_t e = 0; e < n; ++e) {
    const opmath_t own = static_cast<opmath_t>(a[e]);
    const opmath_t mixed = l * own + m * static_cast<opmath_t>(b[e]);
    dst[e] = static_cast<opmath_t>(in[e]) != opmath_t(0) ? static_cast<scalar_t>(mixed) : a[e];
  }
}

std::tuple<at::Tensor, at::Tensor> patchup_cpu(const at::Tensor& x_in, const at::Tensor& perm_in,
                                               const at::Tensor& lam_in, const at::Tensor& key,
                                               int64_t block_size, double gamma) {
  detail::check_patchup_args(x_in, perm_in, lam_in, key, block_size, gamma);
  const auto x = x_in.contiguous();
  const auto perm = perm_in.contiguous();
  const auto lam = lam_in.to(at::toOpMathType(x.scalar_type())).contiguous();
  const int64_t b = x.size(0);
  const int64_t* pp = perm.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < b; ++k) {
    MM_CHECK_ARG(pp[k] >= 0 && pp[k] < b, "patchup: perm must hold indices in [0, ", b, "), got ",
                 pp[k], " at position ", k);
  }
  const auto g = detail::patchup_geometry(x, block_size, gamma);
  const std::vector<uint8_t> bits = draw_mask(g, static_cast<uint64_t>(key.item<int64_t>()));
  const int64_t features = static_cast<int64_t>(bits.size());
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto mask = at::empty({g.channels, g.height, g.width}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "patchup_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    scalar_t* mp = mask.template mutable_data_ptr<scalar_t>();
    for (int64_t e = 0; e < features; ++e) mp[e] = scalar_t(bits[e]);
    const scalar_t* xp = x.template const_data_ptr<scalar_t>();
    const opmath_t* lp = lam.template const_data_ptr<opmath_t>();
    scalar_t* op = out.template mutable_data_ptr<scalar_t>();
    if (features == 0) return;
    // Chunks of the batch x features rectangle that may cut a row, as mix's CPU loops split it.
    at::parallel_for(0, b * features, kGrain, [&](int64_t begin, int64_t end) {
      int64_t i = begin / features, f = begin % features;
      while (begin < end) {
        const int64_t n = std::min(features - f, end - begin);
        const scalar_t* own = xp + i * features + f;
        scalar_t* dst = op + i * features + f;
        const opmath_t l = lp[i], m = opmath_t(1) - lp[i];
        if (l == opmath_t(1)) {
          std::memcpy(dst, own, n * sizeof(scalar_t));
        } else {
          blend_in_blocks(dst, own, xp + pp[i] * features + f, mp + f, l, m, n);
        }
        begin += n;
        ++i;
        f = 0;
      }
    });
  });
  return std::make_tuple(out, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, CPU, m) { m.impl("patchup", &patchup_cpu); }

}  // namespace manifold_mixup
