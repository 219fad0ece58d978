// The ATen-composed kernels (ops/cuda/mix_kernel_aten.h), which a CUDA torch built without the
// CUDA toolkit registers for CUDA tensors: run here on CPU tensors (they are device-generic ATen
// ops) against the definition and against the CPU kernels, with the cases the fused kernels
// promise too: a row with lam == 1 is x's own row, a source with (1 - lam) == 0 sends nothing,
// any index vector in the backward, an index outside [0, B) refused.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "errors.h"
#include "mix_reference.h"
#include "ops/cuda/mix_kernel_aten.h"
#include "ops/mix.h"
#include "ops/patchup.h"

namespace {

using manifold_mixup::detail::mix_aten;
using manifold_mixup::detail::mix_backward_aten;

using mix_reference::reference;
using mix_reference::tolerance;

// The backward's definition, in float64 with ordinary ATen ops.
torch::Tensor reference_backward(const torch::Tensor& g, const torch::Tensor& perm, const torch::Tensor& lam) {
  const auto l = lam.to(torch::kDouble).view({g.size(0), 1});
  const auto gd = g.to(torch::kDouble).reshape({g.size(0), -1});
  return (l * gd).index_add(0, perm, (1 - l) * gd).view(g.sizes());
}

const std::vector<torch::ScalarType> kDtypes{torch::kFloat, torch::kDouble, torch::kHalf,
                                             torch::kBFloat16};

TEST(MixAten, MatchesDefinitionAndCpuKernelForEveryDtypeAndShape) {
  torch::manual_seed(0);
  for (auto dtype : kDtypes) {
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{1}, {7}, {2, 3}, {5, 3, 4}, {33, 2, 1, 5}}) {
      const int64_t b = shape[0];
      const auto x = torch::randn(shape).to(dtype);
      const auto perm = torch::randperm(b);
      const auto lam = torch::rand({b});
      const auto before = x.clone();
      SCOPED_TRACE(c10::str(dtype, " shape ", x.sizes()));
      const auto out = mix_aten(x, perm, lam);
      EXPECT_EQ(out.scalar_type(), dtype);
      EXPECT_EQ(out.sizes(), x.sizes());
      EXPECT_TRUE(out.is_contiguous());
      const double tol = tolerance(dtype);
      EXPECT_TRUE(torch::allclose(out.to(torch::kDouble), reference(x, perm, lam), tol, tol));
      EXPECT_TRUE(torch::allclose(out, manifold_mixup::mix(x, perm, lam), tol, tol));
      EXPECT_TRUE(torch::equal(x, before)) << "x was modified";

      const auto g = torch::randn(shape).to(dtype);
      const auto grad = mix_backward_aten(g, perm, lam);
      EXPECT_EQ(grad.scalar_type(), dtype);
      EXPECT_EQ(grad.sizes(), g.sizes());
      EXPECT_TRUE(torch::allclose(grad.to(torch::kDouble), reference_backward(g, perm, lam), tol, tol));
      EXPECT_TRUE(torch::allclose(grad, manifold_mixup::detail::_mix_backward(g, perm, lam), tol, tol));
    }
  }
}

TEST(MixAten, NonContiguousInputAndLamOfAnotherDtype) {
  const auto base = torch::randn({6, 9, 5}, torch::kDouble);
  const auto x = base.transpose(0, 1).slice(2, 0, 5, 2);
  ASSERT_FALSE(x.is_contiguous());
  const auto perm = torch::randperm(9);
  const auto lam = torch::rand({9}, torch::kHalf);
  EXPECT_TRUE(torch::allclose(mix_aten(x, perm, lam), reference(x, perm, lam), 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(mix_backward_aten(x, perm, lam), reference_backward(x, perm, lam), 1e-12, 1e-12));
}

TEST(MixAten, ChannelsLastInputKeepsItsLayout) {
  const auto x = torch::randn({4, 3, 5, 2}).contiguous(torch::MemoryFormat::ChannelsLast);
  const auto perm = torch::randperm(4);
  const auto lam = torch::rand({4});
  const auto out = mix_aten(x, perm, lam);
  EXPECT_TRUE(out.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(torch::allclose(out.to(torch::kDouble), reference(x, perm, lam), 1e-6, 1e-6));
  const auto grad = mix_backward_aten(x, perm, lam);
  EXPECT_TRUE(grad.is_contiguous(torch::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(torch::allclose(grad.to(torch::kDouble), reference_backward(x, perm, lam), 1e-6, 1e-6));
}

TEST(MixAten, BackwardTakesAnyIndexVector) {
  for (const auto& perm : {torch::tensor({0, 0, 0, 0, 0}, torch::kLong),
                           torch::tensor({1, 1, 4, 2, 2}, torch::kLong),
                           torch::tensor({4, 3, 2, 1, 0}, torch::kLong)}) {
    const auto g = torch::randn({5, 3, 2}, torch::kDouble);
    const auto lam = torch::rand({5}, torch::kDouble);
    SCOPED_TRACE(c10::str("perm ", perm));
    EXPECT_TRUE(torch::allclose(mix_backward_aten(g, perm, lam), reference_backward(g, perm, lam), 1e-12, 1e-12));
  }
}

TEST(MixAten, RowWithLamOneIsItsOwnRowWhateverItWouldGather) {
  const float inf = std::numeric_limits<float>::infinity();
  for (auto dtype : kDtypes) {
    auto x = torch::randn({4, 3}).to(dtype);
    x[2] = inf;
    x[3] = std::numeric_limits<float>::quiet_NaN();
    // Rows 0 and 1 gather the inf and NaN rows with lam == 1; row 2 (inf itself) gathers row 0.
    const auto perm = torch::tensor({2, 3, 0, 1}, torch::kLong);
    const auto lam = torch::tensor({1.0f, 1.0f, 0.5f, 0.25f});
    const auto out = mix_aten(x, perm, lam);
    SCOPED_TRACE(c10::str(dtype));
    EXPECT_TRUE(torch::equal(out[0], x[0])) << out;
    EXPECT_TRUE(torch::equal(out[1], x[1])) << out;
    EXPECT_TRUE(torch::isinf(out[2]).all().item<bool>()) << out;  // its own inf, mixed
    EXPECT_TRUE(torch::isnan(out[3]).all().item<bool>()) << out;  // its own NaN
  }
}

TEST(MixAten, SourceWithLamOneSendsNoGradient) {
  const float inf = std::numeric_limits<float>::infinity();
  for (auto dtype : kDtypes) {
    auto g = torch::randn({4, 3}).to(dtype);
    g[1] = inf;  // sample 1 has lam == 1: it sends (1 - 1) * inf to perm[1] == 0, i.e. nothing
    const auto perm = torch::tensor({3, 0, 1, 2}, torch::kLong);
    const auto lam = torch::tensor({0.5f, 1.0f, 0.25f, 0.75f});
    const auto grad = mix_backward_aten(g, perm, lam);
    SCOPED_TRACE(c10::str(dtype));
    EXPECT_TRUE(torch::isfinite(grad[0]).all().item<bool>()) << grad;
    // grad[0] = lam[0] g[0] (+ nothing from sample 1); grad[1] = lam[1] g[1] + (1 - lam[2]) g[2].
    const double tol = tolerance(dtype);
    EXPECT_TRUE(torch::allclose(grad[0].to(torch::kDouble), 0.5 * g[0].to(torch::kDouble), tol, tol)) << grad;
    EXPECT_TRUE(torch::isinf(grad[1]).all().item<bool>()) << grad;
    const auto expected3 = 0.75 * g[3].to(torch::kDouble) + 0.5 * g[0].to(torch::kDouble);
    EXPECT_TRUE(torch::allclose(grad[3].to(torch::kDouble), expected3, tol, tol)) << grad;
  }
}

TEST(MixAten, EmptyBatchAndEmptySamples) {
  const auto none = torch::empty({0}, torch::kLong);
  EXPECT_EQ(mix_aten(torch::randn({0, 3}), none, torch::rand({0})).sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(mix_backward_aten(torch::randn({0, 3}), none, torch::rand({0})).sizes(),
            (std::vector<int64_t>{0, 3}));
  const auto x = torch::randn({3, 0, 2});
  EXPECT_EQ(mix_aten(x, torch::randperm(3), torch::rand({3})).sizes(), x.sizes());
  EXPECT_EQ(mix_backward_aten(x, torch::randperm(3), torch::rand({3})).sizes(), x.sizes());
}

// The index check raises, here on the CPU, the message the device-side assert carries on CUDA;
// also when no element is read (samples with no features).
TEST(MixAten, IndexOutsideTheBatchIsRefused) {
  for (const auto& x : {torch::randn({4, 3}), torch::randn({4, 0})}) {
    for (int64_t bad : {4, -1, 100}) {
      const auto perm = torch::tensor(std::vector<int64_t>{0, bad, 2, 3});
      const auto lam = torch::rand({4});
      SCOPED_TRACE(c10::str("x ", x.sizes(), " index ", bad));
      using Kernel = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>;
      const std::vector<Kernel> kernels{
          [](const auto& x, const auto& p, const auto& l) { return mix_aten(x, p, l); },
          [](const auto& g, const auto& p, const auto& l) { return mix_backward_aten(g, p, l); }};
      for (const auto& call : kernels) {
        try {
          call(x, perm, lam);
          ADD_FAILURE() << "accepted an index outside [0, 4)";
        } catch (const c10::Error& e) {
          EXPECT_NE(std::string(e.what_without_backtrace()).find("mix: perm holds an index outside [0, B)"),
                    std::string::npos) << e.what_without_backtrace();
        }
      }
    }
  }
}

TEST(MixAten, ArgumentsAreCheckedAsByEveryKernel) {
  const auto x = torch::randn({4, 3});
  EXPECT_THROW(mix_aten(x, torch::randperm(4).to(torch::kInt), torch::rand({4})),
               manifold_mixup::ArgumentError);
  EXPECT_THROW(mix_aten(x, torch::randperm(3), torch::rand({4})), manifold_mixup::ArgumentError);
  EXPECT_THROW(mix_backward_aten(torch::ones({4, 3}, torch::kLong), torch::randperm(4), torch::rand({4})),
               manifold_mixup::ArgumentError);
}

// Under torch.compile every point calls the op with lam all ones but at the drawn one: those
// rows, forward and backward, are the input's own bits (a NaN's payload, -0), not values that
// went through 1 * v + 0 (which a GPU canonicalises, and which makes -0 +0 everywhere).
TEST(MixAten, LamOneRowsAreTheInputsOwnBitsForwardAndBackward) {
  for (auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    auto v = torch::randn({4, 5}).to(dtype);
    v.index_put_({1, 0}, -0.0);
    v.index_put_({2, 3}, std::numeric_limits<float>::quiet_NaN());
    const auto bits = [](const torch::Tensor& t) {
      return t.view(t.element_size() == 4 ? torch::kInt : torch::kShort);
    };
    const auto perm = torch::tensor(std::vector<int64_t>{3, 0, 1, 2});
    const auto ones = torch::ones({4});
    SCOPED_TRACE(c10::str(dtype));
    EXPECT_TRUE(torch::equal(bits(mix_aten(v, perm, ones)), bits(v)));
    EXPECT_TRUE(torch::equal(bits(mix_backward_aten(v, perm, ones)), bits(v)));
    // A row that receives from a source keeps the sum: only lam 1 rows that receive nothing.
    auto lam = ones.clone();
    lam.index_put_({0}, 0.5);  // row 0 sends half of its gradient to row perm[0] = 3
    const auto back = mix_backward_aten(v, perm, lam);
    EXPECT_TRUE(torch::equal(bits(back.narrow(0, 1, 2)), bits(v.narrow(0, 1, 2))));
    EXPECT_TRUE(torch::allclose(back[3].to(torch::kFloat), (v[3] + 0.5 * v[0]).to(dtype).to(torch::kFloat),
                                tolerance(dtype), tolerance(dtype)));
  }
}

// Noisy Feature Mixup and PatchUp on a build without nvcc go through the CPU kernels, which draw
// from the same Philox key: the results are the CPU kernels' (the fused CUDA kernels' too, as
// test_family checks on a GPU), and the noise and mask really are applied.
TEST(MixAten, NoisyMixIsTheCpuKernelsWithTheSameKey) {
  torch::manual_seed(1);
  const auto x = torch::randn({6, 3, 5});
  const auto perm = torch::randperm(6);
  const auto lam = torch::rand({6});
  const auto noise = torch::tensor({0.4f, 0.3f});
  const auto key = torch::tensor({int64_t{12345}});
  const auto out = mix_aten(x, perm, lam, noise, key);
  EXPECT_TRUE(torch::allclose(out, manifold_mixup::mix(x, perm, lam, noise, key), 1e-6, 1e-6));
  // Levels 0: exactly the mix, as the fused kernels promise.
  EXPECT_TRUE(torch::equal(mix_aten(x, perm, lam, torch::zeros({2}), key), mix_aten(x, perm, lam)));
  for (auto dtype : {torch::kDouble, torch::kHalf, torch::kBFloat16}) {
    const auto xd = x.to(dtype);
    EXPECT_TRUE(torch::allclose(mix_aten(xd, perm, lam, noise, key).to(torch::kFloat),
                                manifold_mixup::mix(xd, perm, lam, noise, key).to(torch::kFloat),
                                tolerance(dtype) * 10, tolerance(dtype) * 10)) << dtype;
  }
  EXPECT_FALSE(torch::allclose(out, mix_aten(x, perm, lam), 1e-3, 1e-3));  // the noise is there
  EXPECT_FALSE(torch::equal(out, mix_aten(x, perm, lam, noise, torch::tensor({int64_t{7}}))));
  EXPECT_THROW(mix_aten(x, perm, lam, noise, std::nullopt), manifold_mixup::ArgumentError);
}

TEST(MixAten, PatchUpIsTheCpuKernelsWithTheSameKey) {
  torch::manual_seed(2);
  const auto x = torch::randn({4, 2, 9, 9});
  const auto perm = torch::randperm(4);
  auto lam = torch::rand({4});
  const auto key = torch::tensor({int64_t{99}});
  lam.index_put_({0}, 1.0);  // a row copied
  lam.index_put_({1}, 0.0);  // a row swapped in its blocks (hard PatchUp)
  for (auto dtype : kDtypes) {
    SCOPED_TRACE(c10::str(dtype));
    const auto xd = x.to(dtype);
    const auto [out, mask] = manifold_mixup::detail::patchup_aten(xd, perm, lam, key, 3, 0.5);
    const auto [want, want_mask] = manifold_mixup::patchup(xd, perm, lam, key, 3, 0.5);
    EXPECT_TRUE(torch::equal(out, want));
    EXPECT_TRUE(torch::equal(mask, want_mask));
    EXPECT_GT(mask.sum().item<double>(), 0);  // some blocks
    EXPECT_TRUE(torch::equal(out[0], xd[0]));
  }
  EXPECT_THROW(manifold_mixup::detail::patchup_aten(x, perm, lam, key, 4, 0.5),
               manifold_mixup::ArgumentError);  // an even block
}

}  // namespace
