// CPU kernels of manifold_mixup::mix and _mix_backward: checks, then one fused pass over the
// batch (the loops in mix_loops_impl.h, compiled per CPU capability, picked at run time).
#include <ATen/Version.h>
#include <torch/library.h>

#include <string>

#include "errors.h"
#include "ops/cpu/mix_loops.h"
#include "ops/mix.h"

namespace manifold_mixup {
namespace {

using cpu::Preimages;

void check_indices(const int64_t* p, int64_t b) {
  for (int64_t k = 0; k < b; ++k) {
    MM_CHECK_ARG(p[k] >= 0 && p[k] < b, "mix: perm must hold indices in [0, ", b, "), got ", p[k],
                " at position ", k);
  }
}

Preimages preimages(const int64_t* p, int64_t b) {
  Preimages pre{std::vector<int64_t>(b + 1, 0), std::vector<int64_t>(b)};
  for (int64_t k = 0; k < b; ++k) ++pre.start[p[k] + 1];
  for (int64_t j = 0; j < b; ++j) pre.start[j + 1] += pre.start[j];
  std::vector<int64_t> fill(pre.start.begin(), pre.start.end() - 1);
  for (int64_t k = 0; k < b; ++k) pre.member[fill[p[k]]++] = k;
  return pre;
}

#ifdef MM_HAVE_AVX2_LOOPS
// The AVX2 loops exactly when ATen runs its own AVX2 (or AVX512) kernels: the same CPU checks
// for the same compile flags, and ATEN_CPU_CAPABILITY overrides both alike.
bool use_avx2() {
  static const bool yes = [] {
    const std::string capability = at::get_cpu_capability();
    return capability == "AVX2" || capability == "AVX512";
  }();
  return yes;
}
#endif

// The operands after every check, the CPU's own index check included (a CUDA kernel checks
// as it reads).
detail::Operands operands(const at::Tensor& x, const at::Tensor& perm, const at::Tensor& lam,
                          const char* x_name) {
  detail::check_mix_args(x, perm, lam, x_name);
  detail::Operands a(x, perm, lam);
  check_indices(a.perm.const_data_ptr<int64_t>(), a.batch);
  return a;
}

at::Tensor mix_cpu(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in) {
  const auto a = operands(x_in, perm_in, lam_in, "x");
  auto out = detail::empty_result(a.x);
#ifdef MM_HAVE_AVX2_LOOPS
  if (use_avx2()) {
    cpu::AVX2::mix_rows(a.x, a.perm, a.lam, out);
    return out;
  }
#endif
  cpu::DEFAULT::mix_rows(a.x, a.perm, a.lam, out);
  return out;
}

at::Tensor mix_backward_cpu(const at::Tensor& grad_in, const at::Tensor& perm_in,
                            const at::Tensor& lam_in) {
  const auto a = operands(grad_in, perm_in, lam_in, "grad");
  const Preimages pre = preimages(a.perm.const_data_ptr<int64_t>(), a.batch);
  auto out = detail::empty_result(a.x);
#ifdef MM_HAVE_AVX2_LOOPS
  if (use_avx2()) {
    cpu::AVX2::mix_backward_rows(a.x, pre, a.lam, out);
    return out;
  }
#endif
  cpu::DEFAULT::mix_backward_rows(a.x, pre, a.lam, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, CPU, m) {
  m.impl("mix", &mix_cpu);
  m.impl("_mix_backward", &mix_backward_cpu);
}

}  // namespace manifold_mixup
