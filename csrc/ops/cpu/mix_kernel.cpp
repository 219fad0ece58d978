// Fused CPU kernels of manifold_mixup::mix and mix_backward: one pass over the batch,
// parallel over samples and features, vectorised with ATen's Vectorized types.
// float16 and bfloat16 are loaded, computed in float32 and stored back.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <vector>

#include "ops/mix.h"

namespace manifold_mixup {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per task: enough work to pay for a thread

// Calls fn(row, first_feature, count) over the rows x features rectangle, split into
// parallel chunks that may cut a row, so a batch of one large sample still uses all cores.
template <typename Fn>
void parallel_rows(int64_t rows, int64_t features, const Fn& fn) {
  if (rows == 0 || features == 0) return;
  at::parallel_for(0, rows * features, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin / features, f = begin % features;
    while (begin < end) {
      const int64_t n = std::min(features - f, end - begin);
      fn(i, f, n);
      begin += n;
      ++i;
      f = 0;
    }
  });
}

void check_indices(const int64_t* p, int64_t b, const char* name) {
  for (int64_t k = 0; k < b; ++k) {
    TORCH_CHECK(p[k] >= 0 && p[k] < b, "mix: ", name, " must hold indices in [0, ", b,
                "), got ", p[k], " at position ", k);
  }
}

at::Tensor mix_cpu(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in) {
  detail::check_mix_args(x_in, perm_in, lam_in);
  const auto x = x_in.contiguous();
  const auto perm = perm_in.contiguous();
  const auto lam = lam_in.to(detail::opmath_type(x.scalar_type())).contiguous();
  const int64_t b = x.size(0);
  const int64_t features = b == 0 ? 0 : x.numel() / b;
  check_indices(perm.const_data_ptr<int64_t>(), b, "perm");
  auto out = at::empty_like(x, at::MemoryFormat::Contiguous);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mix_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<opmath_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t* pp = perm.const_data_ptr<int64_t>();
    const opmath_t* lp = lam.const_data_ptr<opmath_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    parallel_rows(b, features, [&](int64_t i, int64_t f, int64_t n) {
      const opmath_t l = lp[i], m = opmath_t(1) - lp[i];
      at::vec::map2(
          [l, m](Vec a, Vec c) { return a * Vec(l) + c * Vec(m); }, op + i * features + f,
          xp + i * features + f, xp + pp[i] * features + f, n);
    });
  });
  return out;
}

// Sources of grad_x[j]: the k with perm[k] == j, grouped by j (a CSR layout), so the
// backward is a gather. For a permutation every group has exactly one member.
struct Preimages {
  std::vector<int64_t> start;  // size b + 1
  std::vector<int64_t> member;  // size b
};

Preimages preimages(const int64_t* p, int64_t b) {
  Preimages pre{std::vector<int64_t>(b + 1, 0), std::vector<int64_t>(b)};
  for (int64_t k = 0; k < b; ++k) ++pre.start[p[k] + 1];
  for (int64_t j = 0; j < b; ++j) pre.start[j + 1] += pre.start[j];
  std::vector<int64_t> fill(pre.start.begin(), pre.start.end() - 1);
  for (int64_t k = 0; k < b; ++k) pre.member[fill[p[k]]++] = k;
  return pre;
}

at::Tensor mix_backward_cpu(const at::Tensor& grad_in, const at::Tensor& perm_in,
                            const at::Tensor& lam_in) {
  detail::check_mix_args(grad_in, perm_in, lam_in, "grad");
  const auto g = grad_in.contiguous();
  const auto perm = perm_in.contiguous();
  const auto lam = lam_in.to(detail::opmath_type(g.scalar_type())).contiguous();
  const int64_t b = g.size(0);
  const int64_t features = b == 0 ? 0 : g.numel() / b;
  check_indices(perm.const_data_ptr<int64_t>(), b, "perm");
  const Preimages pre = preimages(perm.const_data_ptr<int64_t>(), b);
  auto out = at::empty_like(g, at::MemoryFormat::Contiguous);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mix_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    using Vec = at::vec::Vectorized<opmath_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const opmath_t* lp = lam.const_data_ptr<opmath_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    parallel_rows(b, features, [&](int64_t j, int64_t f, int64_t n) {
      const int64_t first = pre.start[j], last = pre.start[j + 1];
      const scalar_t* own = gp + j * features + f;
      scalar_t* dst = op + j * features + f;
      if (last - first == 1) {  // a permutation: one source, one fused pass
        const int64_t k = pre.member[first];
        const opmath_t l = lp[j], m = opmath_t(1) - lp[k];
        at::vec::map2([l, m](Vec a, Vec c) { return a * Vec(l) + c * Vec(m); }, dst, own,
                      gp + k * features + f, n);
        return;
      }
      // Any other index vector: accumulate in opmath, then store once.
      std::vector<opmath_t> acc(n);
      for (int64_t e = 0; e < n; ++e) acc[e] = lp[j] * opmath_t(own[e]);
      for (int64_t s = first; s < last; ++s) {
        const int64_t k = pre.member[s];
        const opmath_t m = opmath_t(1) - lp[k];
        const scalar_t* src = gp + k * features + f;
        for (int64_t e = 0; e < n; ++e) acc[e] += m * opmath_t(src[e]);
      }
      for (int64_t e = 0; e < n; ++e) dst[e] = scalar_t(acc[e]);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, CPU, m) {
  m.impl("mix", &mix_cpu);
  m.impl("mix_backward", &mix_backward_cpu);
}

}  // namespace manifold_mixup
