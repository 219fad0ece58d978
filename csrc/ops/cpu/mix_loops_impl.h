// Definitions of the CPU loops, included once per capability by mix_loops_<capability>.cpp;
// CPU_CAPABILITY names the namespace, as in ATen, so the copies never collide.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "ops/cpu/mix_loops.h"

namespace manifold_mixup::cpu::CPU_CAPABILITY {
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

// dst = l * a + m * b over n elements, vectorised (float16/bfloat16 through float32).
template <typename scalar_t, typename opmath_t>
void lerp_pair(scalar_t* dst, const scalar_t* a, const scalar_t* b, opmath_t l, opmath_t m, int64_t n) {
  using Vec = at::vec::Vectorized<opmath_t>;
  at::vec::map2([l, m](Vec va, Vec vb) { return va * Vec(l) + vb * Vec(m); }, dst, a, b, n);
}

}  // namespace

void mix_rows(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam, at::Tensor& out) {
  const int64_t b = x.size(0);
  const int64_t features = b == 0 ? 0 : x.numel() / b;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mix_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const int64_t* pp = perm.const_data_ptr<int64_t>();
    const opmath_t* lp = lam.const_data_ptr<opmath_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    parallel_rows(b, features, [&](int64_t i, int64_t f, int64_t n) {
      const scalar_t* own = xp + i * features + f;
      if (lp[i] == opmath_t(1)) {  // a copy: x[perm[i]] is not read (0 * inf would be NaN)
        std::copy_n(own, n, op + i * features + f);
        return;
      }
      lerp_pair(op + i * features + f, own, xp + pp[i] * features + f, lp[i], opmath_t(1) - lp[i], n);
    });
  });
}

void mix_backward_rows(const at::Tensor& g, const Preimages& pre, const at::Tensor& lam,
                       at::Tensor& out) {
  const int64_t b = g.size(0);
  const int64_t features = b == 0 ? 0 : g.numel() / b;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mix_backward_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const opmath_t* lp = lam.const_data_ptr<opmath_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    parallel_rows(b, features, [&](int64_t j, int64_t f, int64_t n) {
      const int64_t first = pre.start[j], last = pre.start[j + 1];
      const scalar_t* own = gp + j * features + f;
      scalar_t* dst = op + j * features + f;
      // A source k with 1 - lam[k] == 0 (lam[k] == 1) contributes nothing: g[k] is not read.
      const bool one_source = last - first == 1 && lp[pre.member[first]] != opmath_t(1);
      if (one_source) {  // a permutation: one source, one fused pass
        const int64_t k = pre.member[first];
        lerp_pair(dst, own, gp + k * features + f, lp[j], opmath_t(1) - lp[k], n);
        return;
      }
      bool no_source = true;
      for (int64_t s = first; s < last && no_source; ++s) no_source = lp[pre.member[s]] == opmath_t(1);
      if (no_source) {  // lam[j] * g[j] alone: a copy when lam[j] is 1 too
        if (lp[j] == opmath_t(1)) {
          std::copy_n(own, n, dst);
        } else {
          using Vec = at::vec::Vectorized<opmath_t>;
          const opmath_t l = lp[j];
          at::vec::map([l](Vec v) { return v * Vec(l); }, dst, own, n);
        }
        return;
      }
      // Any other index vector: accumulate in opmath, then store once.
      std::vector<opmath_t> acc(n);
      for (int64_t e = 0; e < n; ++e) acc[e] = lp[j] * opmath_t(own[e]);
      for (int64_t s = first; s < last; ++s) {
        const int64_t k = pre.member[s];
        const opmath_t m = opmath_t(1) - lp[k];
        if (m == opmath_t(0)) continue;
        const scalar_t* src = gp + k * features + f;
        for (int64_t e = 0; e < n; ++e) acc[e] += m * opmath_t(src[e]);
      }
      for (int64_t e = 0; e < n; ++e) dst[e] = scalar_t(acc[e]);
    });
  });
}

}  // namespace manifold_mixup::cpu::CPU_CAPABILITY
