// Fused CUDA kernels of manifold_mixup::mix and _mix_backward: on the stream current at the
// call, with no host sync and no atomic add of a gradient (deterministic).
//
// Arguments are checked on the host before anything else, the device guard included (a CPU x
// beside CUDA perm and lam is an ArgumentError naming perm, not a guard failure). The values
// of perm live on the device, where the host cannot read them without a sync, so the kernels
// check them as they read them: an index outside [0, B) trips a device-side assert and is
// never dereferenced (forward and backward, also when x has no elements per sample). That
// error is CUDA's, not an exception of this call: the launch returns, the next call that waits
// for the device raises "CUDA error: device-side assert triggered", and the process's CUDA
// context stays broken (every later CUDA call fails; only a new process recovers), as with an
// out-of-range index in torch's own index_select.
//
// Forward: one pass, out[i] = lam[i] x[i] + (1 - lam[i]) x[perm[i]]; a row with lam[i] == 1
// is x[i] copied without reading x[perm[i]].
// Backward: one block groups the sources of each target (group_sources_kernel), then one
// gather pass writes each element of grad_x once. For a permutation (the Mixer's perm always
// is one) the grouping is the inverse permutation and the gather reads two rows; any other
// index vector gets a CSR layout, built in the same launch. Sources with lam[k] == 1 are
// skipped: with lam all ones the backward is a copy of the gradient.
//
// Both passes move 16 bytes per load and store when every row starts 16-byte aligned, and use
// 32-bit index math (ATen's multiply-shift divider for the row) below 2^31 loads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "errors.h"
#include "ops/mix.h"

// CUDA_KERNEL_ASSERT_MSG came to torch in September 2024 (pytorch/pytorch#134813); without it
// the assert names the condition instead of the message.
#ifdef CUDA_KERNEL_ASSERT_MSG
#define MM_KERNEL_ASSERT(cond, msg) CUDA_KERNEL_ASSERT_MSG(cond, msg)
#else
#define MM_KERNEL_ASSERT(cond, msg) CUDA_KERNEL_ASSERT(cond)
#endif
#define MM_RANGE_MESSAGE "mix: perm holds an index outside [0, B)"

namespace manifold_mixup {
namespace {

using at::cuda::detail::IntDivider;

constexpr int kThreads = 256;
constexpr int kGroupThreads = 1024;  // the one block of group_sources_kernel
constexpr int kWarp = 32;

int blocks_for(int64_t n) {
  const int64_t max_blocks = 65535LL * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, max_blocks)));
}

template <typename index_t>
__device__ __forceinline__ index_t first_index() {
  return static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
template <typename index_t>
__device__ __forceinline__ index_t grid_stride() {
  return static_cast<index_t>(gridDim.x) * blockDim.x;
}

// kVec elements moved by one load or store (16 bytes when kVec = 16 / sizeof(T)).
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// The grouping of sources by target, in one int32 workspace of 3B + 2 entries:
//   flag       1 when perm is a permutation (then inv is its inverse), else 0
//   inv[B]     inverse permutation (a permutation), or fill cursors (any other index vector)
//   start[B+1] member[B]   CSR: the sources k of target j are member[start[j] .. start[j+1]),
//              in increasing k (written only when perm is not a permutation)
template <typename I>  // int32_t, or const int32_t where the groups are only read
struct Groups {
  I *flag, *inv, *start, *member;
};
template <typename I>
__device__ __forceinline__ Groups<I> groups_in(I* ws, int32_t b) {
  return {ws, ws + 1, ws + 1 + b, ws + 2 + 2 * static_cast<int64_t>(b)};
}
int64_t groups_size(int64_t b) { return 3 * b + 2; }

__global__ void check_indices_kernel(const int64_t* __restrict__ perm, int64_t b) {
  for (int64_t k = first_index<int64_t>(); k < b; k += grid_stride<int64_t>()) {
    MM_KERNEL_ASSERT(perm[k] >= 0 && perm[k] < b, MM_RANGE_MESSAGE);
  }
}

template <typename scalar_t, typename index_t, int kVec>
__global__ void mix_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ perm,
                           const at::opmath_type<scalar_t>* __restrict__ lam, scalar_t* __restrict__ out,
                           int64_t b, index_t packs, index_t row_packs, IntDivider<index_t> rows) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const P* xs = reinterpret_cast<const P*>(x);
  P* os = reinterpret_cast<P*>(out);
  for (index_t u = first_index<index_t>(); u < packs; u += grid_stride<index_t>()) {
    const auto rc = rows.divmod(u);  // row i = rc.div, pack within the row = rc.mod
    const int64_t p = perm[rc.div];
    const bool ok = p >= 0 && p < b;
    MM_KERNEL_ASSERT(ok, MM_RANGE_MESSAGE);
    const opmath_t l = lam[rc.div];
    const P own = xs[u];
    if (l == opmath_t(1) || !ok) {  // a copy: x[perm[i]] is not read (0 * inf would be NaN)
      os[u] = own;
      continue;
    }
    const P other = xs[static_cast<index_t>(p) * row_packs + rc.mod];
    const opmath_t m = opmath_t(1) - l;
    P r;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      r.v[e] = static_cast<scalar_t>(l * static_cast<opmath_t>(own.v[e]) + m * static_cast<opmath_t>(other.v[e]));
    }
    os[u] = r;
  }
}

// One block: checks every index, writes the inverse when perm is a permutation, else the CSR
// grouping. A permutation costs three strided passes over B entries; another index vector
// also a count (integer atomics: the counts do not depend on their order), a scan and an
// ordered fill by one warp, so that each group lists its sources in increasing k and the
// gather's sums are the same on every run.
__global__ void __launch_bounds__(kGroupThreads)
group_sources_kernel(const int64_t* __restrict__ perm, int32_t b, int32_t* __restrict__ ws) {
  const auto gr = groups_in(ws, b);
  const int t = threadIdx.x, nt = blockDim.x;
  for (int32_t j = t; j < b; j += nt) gr.inv[j] = -1;
  __syncthreads();
  for (int32_t k = t; k < b; k += nt) {
    const int64_t p = perm[k];
    const bool ok = p >= 0 && p < b;
    MM_KERNEL_ASSERT(ok, MM_RANGE_MESSAGE);
    if (ok) gr.inv[p] = k;  // one writer per target for a permutation; else any one wins
  }
  __syncthreads();
  // Every target hit means B sources on B targets: a permutation, and inv is its inverse.
  bool hit = true;
  for (int32_t j = t; j < b; j += nt) {
    const int32_t k = gr.inv[j];
    hit = hit && k >= 0 && perm[k] == j;
  }
  if (__syncthreads_and(hit)) {
    if (t == 0) *gr.flag = 1;
    return;
  }
  if (t == 0) *gr.flag = 0;
  for (int32_t j = t; j <= b; j += nt) gr.start[j] = 0;
  __syncthreads();
  for (int32_t k = t; k < b; k += nt) {
    const int64_t p = perm[k];
    if (p >= 0 && p < b) atomicAdd(&gr.start[p + 1], 1);
  }
  __syncthreads();
  if (t < kWarp) {  // inclusive scan of the counts, 32 at a time
    int32_t carry = 0;
    for (int32_t base = 1; base <= b; base += kWarp) {
      const int32_t j = base + t;
      int32_t v = j <= b ? gr.start[j] : 0;
#pragma unroll
      for (int d = 1; d < kWarp; d <<= 1) {
        const int32_t n = __shfl_up_sync(0xffffffffu, v, d);
        if (t >= d) v += n;
      }
      if (j <= b) gr.start[j] = v + carry;
      carry += __shfl_sync(0xffffffffu, v, kWarp - 1);
    }
  }
  __syncthreads();
  for (int32_t j = t; j < b; j += nt) gr.inv[j] = gr.start[j];  // fill cursors
  __syncthreads();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 700
  if (t == 0) {  // no __match_any_sync before Volta: one thread, in order
    for (int32_t k = 0; k < b; ++k) {
      const int64_t p = perm[k];
      if (p >= 0 && p < b) gr.member[gr.inv[p]++] = k;
    }
  }
#else
  if (t < kWarp) {  // 32 sources at a time, in order; lanes with one target take slots in lane order
    for (int32_t base = 0; base < b; base += kWarp) {
      const int32_t k = base + t;
      const int64_t p = k < b ? perm[k] : -1;
      const bool valid = k < b && p >= 0 && p < b;
      const unsigned same = __match_any_sync(0xffffffffu, valid ? p : -1 - static_cast<int64_t>(t));
      const int leader = __ffs(same) - 1;
      int32_t slot = 0;
      if (valid && t == leader) {
        slot = gr.inv[p];
        gr.inv[p] = slot + __popc(same);
      }
      slot = __shfl_sync(0xffffffffu, slot, leader);
      if (valid) gr.member[slot + __popc(same & ((1u << t) - 1u))] = k;
      __syncwarp();
    }
  }
#endif
}

// grad[j] = lam[j] g[j] + sum over sources k of j with lam[k] != 1 of (1 - lam[k]) g[k], each
// element written once by one thread from what it gathers.
template <typename scalar_t, typename index_t, int kVec>
__global__ void mix_backward_kernel(const scalar_t* __restrict__ g, const int32_t* __restrict__ ws,
                                    const at::opmath_type<scalar_t>* __restrict__ lam,
                                    scalar_t* __restrict__ out, int32_t b, index_t packs,
                                    index_t row_packs, IntDivider<index_t> rows) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const P* gs = reinterpret_cast<const P*>(g);
  P* os = reinterpret_cast<P*>(out);
  const auto gr = groups_in(ws, b);
  const bool permutation = *gr.flag != 0;
  for (index_t u = first_index<index_t>(); u < packs; u += grid_stride<index_t>()) {
    const auto rc = rows.divmod(u);
    const index_t j = rc.div;
    const P own = gs[u];
    const opmath_t lj = lam[j];
    opmath_t acc[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[e] = lj * static_cast<opmath_t>(own.v[e]);
    bool alone = true;
    const auto add = [&](int32_t k) {
      const opmath_t m = opmath_t(1) - lam[k];
      if (m == opmath_t(0)) return;  // g[k] is not read
      alone = false;
      const P other = gs[static_cast<index_t>(k) * row_packs + rc.mod];
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[e] += m * static_cast<opmath_t>(other.v[e]);
    };
    if (permutation) {
      add(gr.inv[j]);
    } else {
      for (int32_t s = gr.start[j]; s < gr.start[j + 1]; ++s) add(gr.member[s]);
    }
    if (alone && lj == opmath_t(1)) {
      os[u] = own;
      continue;
    }
    P r;
#pragma unroll
    for (int e = 0; e < kVec; ++e) r.v[e] = static_cast<scalar_t>(acc[e]);
    os[u] = r;
  }
}

bool aligned_16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Calls launch(std::integral_constant<int, kVec>, index_t{}, packs) with 16-byte packs when
// every row of `in` and `out` starts 16-byte aligned, else single elements; 32-bit indices
// when the packs fit.
template <typename scalar_t, typename Launch>
void by_layout(const at::Tensor& in, const at::Tensor& out, int64_t features, const Launch& launch) {
  constexpr int kVec = 16 / sizeof(scalar_t);
  const bool vectorised = features % kVec == 0 && aligned_16(in.const_data_ptr()) &&
                          aligned_16(out.const_data_ptr());
  const int64_t packs = in.numel() / (vectorised ? kVec : 1);
  const bool small = packs <= std::numeric_limits<int32_t>::max();
  if (vectorised && small) launch(std::integral_constant<int, kVec>{}, uint32_t{}, packs);
  else if (vectorised) launch(std::integral_constant<int, kVec>{}, int64_t{}, packs);
  else if (small) launch(std::integral_constant<int, 1>{}, uint32_t{}, packs);
  else launch(std::integral_constant<int, 1>{}, int64_t{}, packs);
}

void check_indices(const at::Tensor& perm, int64_t b, cudaStream_t stream) {
  if (b == 0) return;
  check_indices_kernel<<<blocks_for(b), kThreads, 0, stream>>>(perm.const_data_ptr<int64_t>(), b);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor mix_cuda(const at::Tensor& x_in, const at::Tensor& perm_in, const at::Tensor& lam_in) {
  detail::check_mix_args(x_in, perm_in, lam_in, "x");
  c10::cuda::CUDAGuard guard(x_in.device());
  const detail::Operands a(x_in, perm_in, lam_in);
  const auto &x = a.x, &perm = a.perm, &lam = a.lam;
  auto out = detail::empty_result(x);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (out.numel() == 0) {  // no element reads perm: check it alone, as the CPU kernel does
    check_indices(perm, a.batch, stream);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mix_cuda", [&] {
    by_layout<scalar_t>(x, out, a.features, [&](auto vec, auto index, int64_t packs) {
      using index_t = decltype(index);
      constexpr int kVec = decltype(vec)::value;
      const auto row_packs = static_cast<index_t>(a.features / kVec);
      mix_kernel<scalar_t, index_t, kVec><<<blocks_for(packs), kThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), perm.const_data_ptr<int64_t>(),
          lam.const_data_ptr<at::opmath_type<scalar_t>>(), out.mutable_data_ptr<scalar_t>(), a.batch,
          static_cast<index_t>(packs), row_packs, IntDivider<index_t>(row_packs));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor mix_backward_cuda(const at::Tensor& grad_in, const at::Tensor& perm_in,
                             const at::Tensor& lam_in) {
  detail::check_mix_args(grad_in, perm_in, lam_in, "grad");
  MM_CHECK_ARG(grad_in.size(0) < std::numeric_limits<int32_t>::max(), "mix: on CUDA the batch ",
               "must have fewer than 2^31 - 1 samples, got ", grad_in.size(0));
  c10::cuda::CUDAGuard guard(grad_in.device());
  const detail::Operands a(grad_in, perm_in, lam_in);
  const auto &g = a.x, &perm = a.perm, &lam = a.lam;
  auto out = detail::empty_result(g);
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (out.numel() == 0) {
    check_indices(perm, a.batch, stream);
    return out;
  }
  const auto b = static_cast<int32_t>(a.batch);
  const at::Tensor groups = at::empty({groups_size(b)}, perm.options().dtype(at::kInt));
  int32_t* ws = groups.mutable_data_ptr<int32_t>();
  group_sources_kernel<<<1, kGroupThreads, 0, stream>>>(perm.const_data_ptr<int64_t>(), b, ws);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "mix_backward_cuda", [&] {
    by_layout<scalar_t>(g, out, a.features, [&](auto vec, auto index, int64_t packs) {
      using index_t = decltype(index);
      constexpr int kVec = decltype(vec)::value;
      const auto row_packs = static_cast<index_t>(a.features / kVec);
      mix_backward_kernel<scalar_t, index_t, kVec><<<blocks_for(packs), kThreads, 0, stream>>>(
          g.const_data_ptr<scalar_t>(), ws, lam.const_data_ptr<at::opmath_type<scalar_t>>(),
          out.mutable_data_ptr<scalar_t>(), b, static_cast<index_t>(packs), row_packs,
          IntDivider<index_t>(row_packs));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(manifold_mixup, CUDA, m) {
  m.impl("mix", &mix_cuda);
  m.impl("_mix_backward", &mix_backward_cuda);
}

}  // namespace manifold_mixup
