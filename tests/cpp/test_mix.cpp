// manifold_mixup::mix against a plain libtorch expression: every dtype, ranks 1 to 5,
// non-contiguous input, batch size 1, odd sizes; gradients against the expression's own
// autograd; every refusal raises with a message naming the argument.
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "errors.h"
#include "mix_reference.h"
#include "ops/mix.h"

namespace {

using manifold_mixup::mix;

using mix_reference::reference;
using mix_reference::tolerance;


std::vector<torch::Device> devices() {
  std::vector<torch::Device> d{torch::kCPU};
  if (torch::cuda::is_available()) d.emplace_back(torch::kCUDA);
  return d;
}

std::vector<int64_t> shape_of_rank(int64_t batch, int rank) {
  const int64_t odd[] = {3, 5, 2, 7};
  std::vector<int64_t> s{batch};
  for (int r = 1; r < rank; ++r) s.push_back(odd[r - 1]);
  return s;
}

const std::vector<torch::ScalarType> kDtypes{torch::kFloat, torch::kDouble, torch::kHalf,
                                             torch::kBFloat16};

TEST(Mix, MatchesExpressionForEveryDtypeRankAndBatch) {
  torch::manual_seed(0);
  for (const auto& dev : devices()) {
    for (auto dtype : kDtypes) {
      for (int rank = 1; rank <= 5; ++rank) {
        for (int64_t batch : {1, 2, 7, 33}) {
          const auto opts = torch::TensorOptions().device(dev);
          const auto x = torch::randn(shape_of_rank(batch, rank), opts.dtype(dtype));
          const auto perm = torch::randperm(batch, opts.dtype(torch::kLong));
          const auto lam = torch::rand({batch}, opts);
          const auto before = x.clone();
          const auto out = mix(x, perm, lam);
          SCOPED_TRACE(c10::str(dev, " ", dtype, " rank ", rank, " batch ", batch));
          EXPECT_EQ(out.scalar_type(), dtype);
          EXPECT_EQ(out.sizes(), x.sizes());
          EXPECT_EQ(out.device(), x.device());
          EXPECT_TRUE(torch::allclose(out.to(torch::kDouble), reference(x, perm, lam),
                                      tolerance(dtype), tolerance(dtype)));
          EXPECT_TRUE(torch::equal(x, before)) << "x was modified";
        }
      }
    }
  }
}

TEST(Mix, LargeRowsUseEveryChunkOfTheParallelSplit) {
  // Rows longer than one parallel chunk, and an odd tail for the vectorised loop.
  const auto x = torch::randn({3, 70001});
  const auto perm = torch::tensor({2, 0, 1}, torch::kLong);
  const auto lam = torch::rand({3});
  EXPECT_TRUE(torch::allclose(mix(x, perm, lam).to(torch::kDouble), reference(x, perm, lam), 1e-6, 1e-6));
}

TEST(Mix, NonContiguousInput) {
  for (const auto& dev : devices()) {
    for (auto dtype : kDtypes) {
      const auto opts = torch::TensorOptions().device(dev).dtype(dtype);
      const auto base = torch::randn({6, 9, 5}, opts);
      const std::vector<torch::Tensor> views{
          base.transpose(0, 1),                                        // batch 9, strided
          base.slice(/*dim=*/2, 0, 5, /*step=*/2),                     // gaps within rows
          base.permute({2, 0, 1}),                                     // batch 5
          torch::randn({4, 3}, opts).expand({4, 3}).t().contiguous().t(),  // column-major
      };
      for (const auto& x : views) {
        ASSERT_FALSE(x.is_contiguous());
        const int64_t b = x.size(0);
        const auto perm = torch::randperm(b, torch::TensorOptions().device(dev).dtype(torch::kLong));
        const auto lam = torch::rand({b}, torch::TensorOptions().device(dev));
        SCOPED_TRACE(c10::str(dev, " ", dtype, " view ", x.sizes(), " strides ", x.strides()));
        EXPECT_TRUE(torch::allclose(mix(x, perm, lam).to(torch::kDouble), reference(x, perm, lam),
                                    tolerance(dtype), tolerance(dtype)));
      }
    }
  }
}

TEST(Mix, LamOfAnotherFloatingDtype) {
  const auto x = torch::randn({5, 4}, torch::kDouble);
  const auto perm = torch::randperm(5);
  const auto lam = torch::rand({5}, torch::kHalf);
  EXPECT_TRUE(torch::allclose(mix(x, perm, lam), reference(x, perm, lam), 1e-12, 1e-12));
}

// Gradients of mix with respect to x and lam equal those of the expression.
void expect_gradients_match(const torch::Tensor& x0, const torch::Tensor& perm, const torch::Tensor& lam0) {
  auto x = x0.detach().clone().requires_grad_(true);
  auto lam = lam0.detach().clone().requires_grad_(true);
  auto xr = x0.detach().clone().requires_grad_(true);
  auto lamr = lam0.detach().clone().requires_grad_(true);
  const auto g = torch::randn_like(x0);
  (mix(x, perm, lam) * g).sum().backward();
  std::vector<int64_t> shape(x0.dim(), 1);
  shape[0] = x0.size(0);
  const auto l = lamr.view(shape);
  ((l * xr + (1 - l) * xr.index_select(0, perm)) * g).sum().backward();
  const double tol = tolerance(x0.scalar_type());
  EXPECT_TRUE(torch::allclose(x.grad(), xr.grad(), tol, tol)) << x.grad() << xr.grad();
  EXPECT_TRUE(torch::allclose(lam.grad(), lamr.grad(), tol * 10, tol * 10)) << lam.grad() << lamr.grad();
}

TEST(MixGrad, MatchesExpressionAutogradForPermutations) {
  torch::manual_seed(1);
  for (const auto& dev : devices()) {
    for (auto dtype : {torch::kFloat, torch::kDouble}) {
      for (int rank = 1; rank <= 5; ++rank) {
        for (int64_t batch : {1, 5, 16}) {
          const auto opts = torch::TensorOptions().device(dev);
          SCOPED_TRACE(c10::str(dev, " ", dtype, " rank ", rank, " batch ", batch));
          expect_gradients_match(torch::randn(shape_of_rank(batch, rank), opts.dtype(dtype)),
                                 torch::randperm(batch, opts.dtype(torch::kLong)),
                                 torch::rand({batch}, opts.dtype(dtype)));
        }
      }
    }
  }
}

TEST(MixGrad, AnyIndexVectorNotOnlyPermutations) {
  for (const auto& dev : devices()) {
    const auto opts = torch::TensorOptions().device(dev);
    const auto li = opts.dtype(torch::kLong);
    for (const auto& perm : {torch::tensor({0, 0, 0, 0, 0}, li), torch::tensor({1, 1, 4, 2, 2}, li),
                             torch::tensor({4, 3, 2, 1, 0}, li), torch::tensor({0, 1, 2, 3, 4}, li)}) {
      SCOPED_TRACE(c10::str(dev, " perm ", perm));
      expect_gradients_match(torch::randn({5, 3, 2}, opts.dtype(torch::kDouble)), perm,
                             torch::rand({5}, opts.dtype(torch::kDouble)));
    }
  }
}

TEST(MixGrad, ReducedPrecisionGradientKeepsDtype) {
  for (auto dtype : {torch::kHalf, torch::kBFloat16}) {
    auto x = torch::randn({4, 8}).to(dtype).requires_grad_(true);
    const auto perm = torch::randperm(4);
    const auto lam = torch::rand({4});
    mix(x, perm, lam).sum().backward();
    EXPECT_EQ(x.grad().scalar_type(), dtype);
    // sum of out = sum_i (lam_i + sum_{perm[k]=i}(1-lam_k)) x_i: for a permutation each
    // sample's gradient is lam_i + 1 - lam_{inv(i)}.
    const auto inv = torch::argsort(perm);
    const auto expected = (lam + 1 - lam.index_select(0, inv)).unsqueeze(1).expand({4, 8});
    EXPECT_TRUE(torch::allclose(x.grad().to(torch::kFloat), expected, 1e-2, 1e-2));
  }
}

// The refusal raises ArgumentError (errors.h) whose message names `needle`.
void expect_refused(const std::function<void()>& call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "accepted; expected a refusal naming " << needle;
  } catch (const manifold_mixup::ArgumentError& e) {
    const std::string msg = e.what_without_backtrace();
    EXPECT_FALSE(msg.empty());
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(MixRefusal, EveryBadArgumentIsNamed) {
  const auto x = torch::randn({4, 3});
  const auto perm = torch::randperm(4);
  const auto lam = torch::rand({4});
  expect_refused([&] { mix(torch::ones({4, 3}, torch::kLong), perm, lam); }, "x must be a floating");
  expect_refused([&] { mix(torch::ones({4, 3}, torch::kInt), perm, lam); }, "x must be a floating");
  expect_refused([&] { mix(torch::tensor(1.0), torch::randperm(1), torch::rand({1})); }, "x must have at least one");
  expect_refused([&] { mix(x, perm.to(torch::kInt), lam); }, "perm must be an int64");
  expect_refused([&] { mix(x, perm.to(torch::kFloat), lam); }, "perm must be an int64");
  expect_refused([&] { mix(x, torch::randperm(3), lam); }, "perm must have length");
  expect_refused([&] { mix(x, perm.view({2, 2}), lam); }, "perm must have shape [B]");
  expect_refused([&] { mix(x, perm, torch::rand({5})); }, "lam must have length");
  expect_refused([&] { mix(x, perm, torch::rand({4, 1})); }, "lam must have shape [B]");
  expect_refused([&] { mix(x, perm, torch::ones({4}, torch::kLong)); }, "lam must be a floating");
  expect_refused([&] { mix(x, torch::tensor({0, 1, 2, 4}), lam); }, "perm must hold indices in [0, 4)");
  expect_refused([&] { mix(x, torch::tensor({0, -1, 2, 3}), lam); }, "perm must hold indices in [0, 4)");
  expect_refused([&] { mix(x, torch::Tensor(), lam); }, "perm is an undefined");
  expect_refused([&] { manifold_mixup::detail::_mix_backward(x, torch::tensor({9, 1, 2, 3}), lam); },
                 "perm must hold indices");
  expect_refused([&] { manifold_mixup::detail::_mix_backward(x, torch::tensor({0, -1, 2, 3}), lam); },
                 "perm must hold indices");
  // An empty row still has its indices checked.
  expect_refused([&] { mix(torch::randn({4, 0}), torch::tensor({0, 1, 2, 7}), lam); }, "perm must hold indices");
  if (torch::cuda::is_available()) {
    expect_refused([&] { mix(x.cuda(), perm, lam.cuda()); }, "perm must be on x's device");
    expect_refused([&] { mix(x.cuda(), perm.cuda(), lam); }, "lam must be on x's device");
  } else {
    expect_refused([&] { mix(x, perm.to(torch::kMeta), lam); }, "perm must be on x's device");
    expect_refused([&] { mix(x, perm, lam.to(torch::kMeta)); }, "lam must be on x's device");
  }
}

// The bits of t, so that NaN rows compare equal to themselves (exact, not approximate).
torch::Tensor bits(const torch::Tensor& t) {
  switch (t.element_size()) {
    case 2: return t.view(torch::kShort);
    case 4: return t.view(torch::kInt);
    default: return t.view(torch::kLong);
  }
}

// Rows 1 and 3 hold inf and NaN; a permutation sends every row to one of them.
torch::Tensor poisoned(torch::ScalarType dtype, const torch::Device& dev) {
  auto x = torch::randn({4, 3, 8}, torch::TensorOptions().dtype(dtype).device(dev));
  x[1].fill_(std::numeric_limits<float>::infinity());
  x[3].fill_(std::numeric_limits<float>::quiet_NaN());
  return x;
}

TEST(MixLamOne, AllOnesIsXExactlyWhateverOtherRowsHold) {
  for (const auto& dev : devices()) {
    for (auto dtype : kDtypes) {
      SCOPED_TRACE(c10::str(dev, " ", dtype));
      const auto x = poisoned(dtype, dev);
      const auto perm = torch::tensor({3, 0, 1, 2}, torch::TensorOptions().dtype(torch::kLong).device(dev));
      for (auto lam_dtype : {torch::kFloat, torch::kDouble, dtype}) {
        const auto lam = torch::ones({4}, torch::TensorOptions().dtype(lam_dtype).device(dev));
        const auto out = mix(x, perm, lam);
        EXPECT_TRUE(torch::equal(bits(out), bits(x))) << "lam " << lam_dtype;
        // The backward: with lam all ones grad_x is the gradient itself.
        const auto g = poisoned(dtype, dev);
        const auto gx = manifold_mixup::detail::_mix_backward(g, perm, lam);
        EXPECT_TRUE(torch::equal(bits(gx), bits(g))) << "lam " << lam_dtype;
      }
    }
  }
}

TEST(MixLamOne, RowsWithLamOneIgnoreTheirPartnerOthersMix) {
  for (const auto& dev : devices()) {
    for (auto dtype : kDtypes) {
      SCOPED_TRACE(c10::str(dev, " ", dtype));
      const auto li = torch::TensorOptions().dtype(torch::kLong).device(dev);
      const auto x = poisoned(dtype, dev);
      // Rows 0 and 2 read the poisoned rows with lam 1; rows 1 and 3 mix finite rows.
      const auto perm = torch::tensor({1, 0, 3, 2}, li);
      const auto lam = torch::tensor({1.0, 0.7, 1.0, 0.6}, torch::TensorOptions().device(dev));
      const auto out = mix(x, perm, lam);
      EXPECT_TRUE(torch::equal(bits(out[0]), bits(x[0])));
      EXPECT_TRUE(torch::equal(bits(out[2]), bits(x[2])));
      // Rows 1 and 3 are the poisoned ones mixed with finite rows: inf and NaN, as the expression.
      EXPECT_TRUE(torch::all(torch::isinf(out[1])).item<bool>());
      EXPECT_TRUE(torch::all(torch::isnan(out[3])).item<bool>());
      // Finite rows everywhere: the expression, lam ones or not.
      const auto xf = torch::randn({4, 3, 8}, torch::TensorOptions().dtype(dtype).device(dev));
      EXPECT_TRUE(torch::allclose(mix(xf, perm, lam).to(torch::kDouble), reference(xf, perm, lam),
                                  tolerance(dtype), tolerance(dtype)));
      // The backward: targets 1 and 3 get nothing from sources 0 and 2 (lam 1), whose gradient
      // rows hold inf and NaN; the other targets mix as the expression's gradient does.
      auto g = torch::randn({4, 3, 8}, torch::TensorOptions().dtype(dtype).device(dev));
      g[0].fill_(std::numeric_limits<float>::infinity());
      g[2].fill_(std::numeric_limits<float>::quiet_NaN());
      const auto gx = manifold_mixup::detail::_mix_backward(g, perm, lam);
      const auto l = lam.to(torch::kDouble);
      const auto gd = g.to(torch::kDouble);
      for (int64_t j : {1, 3}) {
        EXPECT_TRUE(torch::allclose(gx[j].to(torch::kDouble), l[j] * gd[j], tolerance(dtype), tolerance(dtype))) << j;
      }
    }
  }
}

TEST(MixLamOne, AnyIndexVectorSkipsSourcesWithLamOne) {
  for (const auto& dev : devices()) {
    const auto opts = torch::TensorOptions().dtype(torch::kDouble).device(dev);
    const auto li = torch::TensorOptions().dtype(torch::kLong).device(dev);
    SCOPED_TRACE(c10::str(dev));
    // Target 0 has sources 0, 1, 2 (source 1 with lam 1), target 4 has 3 and 4, the others none.
    const auto perm = torch::tensor({0, 0, 0, 4, 4}, li);
    const auto lam = torch::tensor({0.6, 1.0, 0.8, 1.0, 0.9}, opts);
    auto g = torch::randn({5, 6}, opts);
    const auto finite = g.clone();
    g[1].fill_(std::numeric_limits<double>::infinity());
    g[3].fill_(std::numeric_limits<double>::quiet_NaN());
    const auto gx = manifold_mixup::detail::_mix_backward(g, perm, lam);
    // The gradient of the expression with the lam-one sources' rows finite (they get weight 0).
    auto fixed = g.clone();
    fixed[1].copy_(finite[1]);
    fixed[3].copy_(finite[3]);
    const auto expected = manifold_mixup::detail::_mix_backward(fixed, perm, lam);
    for (int64_t j : {0, 2, 4}) EXPECT_TRUE(torch::allclose(gx[j], expected[j], 1e-12, 1e-12)) << j;
    const auto l = lam.view({5, 1});
    EXPECT_TRUE(torch::allclose(expected[0], l[0] * fixed[0] + (1 - l[0]) * fixed[0] + (1 - l[2]) * fixed[2], 1e-12, 1e-12));
    // Rows 1 and 3 have no source: lam[j] * g[j], the inf and NaN of their own rows.
    EXPECT_TRUE(torch::equal(bits(gx[1]), bits(g[1])));
    EXPECT_TRUE(torch::equal(bits(gx[3]), bits(g[3])));
  }
}

TEST(MixLamOne, LamGradientStaysTheDerivative) {
  // d out[i] / d lam[i] = x[i] - x[perm[i]], at lam = 1 too.
  for (const auto& dev : devices()) {
    SCOPED_TRACE(c10::str(dev));
    const auto opts = torch::TensorOptions().dtype(torch::kDouble).device(dev);
    expect_gradients_match(torch::randn({5, 3, 2}, opts), torch::randperm(5, opts.dtype(torch::kLong)),
                           torch::tensor({1.0, 0.5, 1.0, 1.0, 0.75}, opts));
    expect_gradients_match(torch::randn({5, 4}, opts), torch::randperm(5, opts.dtype(torch::kLong)),
                           torch::ones({5}, opts));
  }
}

TEST(MixMemoryFormat, ChannelsLastStaysChannelsLast) {
  for (const auto& dev : devices()) {
    for (auto dtype : kDtypes) {
      SCOPED_TRACE(c10::str(dev, " ", dtype));
      const auto opts = torch::TensorOptions().dtype(dtype).device(dev);
      for (const auto& [x, format] :
           {std::pair{torch::randn({5, 6, 3, 4}, opts).contiguous(torch::MemoryFormat::ChannelsLast),
                      torch::MemoryFormat::ChannelsLast},
            std::pair{torch::randn({5, 6, 3, 4, 2}, opts).contiguous(torch::MemoryFormat::ChannelsLast3d),
                      torch::MemoryFormat::ChannelsLast3d}}) {
        const auto perm = torch::randperm(5, opts.dtype(torch::kLong));
        const auto lam = torch::rand({5}, opts.dtype(torch::kFloat));
        const auto out = mix(x, perm, lam);
        EXPECT_TRUE(out.is_contiguous(format)) << out.strides();
        EXPECT_TRUE(torch::allclose(out.to(torch::kDouble), reference(x, perm, lam), tolerance(dtype), tolerance(dtype)));
        const auto gx = manifold_mixup::detail::_mix_backward(x, perm, lam);
        EXPECT_TRUE(gx.is_contiguous(format)) << gx.strides();
        // The gradient of a linear map is its transpose: <mix(v), x> == <v, mix^T(x)>.
        const auto v = torch::randn_like(x);
        const double lhs = (mix(v, perm, lam).to(torch::kDouble) * x.to(torch::kDouble)).sum().item<double>();
        const double rhs = (v.to(torch::kDouble) * gx.to(torch::kDouble)).sum().item<double>();
        EXPECT_NEAR(lhs, rhs, 200 * tolerance(dtype) * (1 + std::abs(lhs)));
      }
      // A contiguous input stays contiguous.
      const auto x = torch::randn({5, 6, 3, 4}, opts);
      EXPECT_TRUE(mix(x, torch::randperm(5, opts.dtype(torch::kLong)), torch::rand({5}, opts.dtype(torch::kFloat)))
                      .is_contiguous());
    }
  }
}

TEST(MixRefusal, CudaArgumentsAreCheckedBeforeTheDeviceGuard) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  // A CPU x with CUDA perm and lam dispatches to the CUDA kernel: the refusal names perm.
  const auto x = torch::randn({4, 3});
  const auto perm = torch::randperm(4).cuda();
  const auto lam = torch::rand({4}).cuda();
  expect_refused([&] { mix(x, perm, lam); }, "perm must be on x's device");
  expect_refused([&] { manifold_mixup::detail::_mix_backward(x, perm, lam); }, "perm must be on grad's device");
  expect_refused([&] { mix(x, torch::randperm(4), lam); }, "lam must be on x's device");
}

TEST(MixMeta, ShapeOnlyKernelGivesShapeAndDtype) {
  const auto x = torch::empty({6, 2, 3}, torch::TensorOptions().device(torch::kMeta).dtype(torch::kHalf));
  const auto out = mix(x, torch::empty({6}, x.options().dtype(torch::kLong)), torch::empty({6}, x.options().dtype(torch::kFloat)));
  EXPECT_EQ(out.device().type(), torch::kMeta);
  EXPECT_EQ(out.sizes(), x.sizes());
  EXPECT_EQ(out.scalar_type(), torch::kHalf);
  const auto cl = torch::empty({6, 2, 3, 5}, x.options()).contiguous(torch::MemoryFormat::ChannelsLast);
  EXPECT_TRUE(mix(cl, torch::empty({6}, x.options().dtype(torch::kLong)), torch::empty({6}, x.options()))
                  .is_contiguous(torch::MemoryFormat::ChannelsLast));
}

}  // namespace
