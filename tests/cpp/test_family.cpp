// The manifold mixup family from C++: lambda modes, prob, no Python in the process.
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/types.h>

#include "errors.h"
#include "mixer.h"
#include "ops/mix.h"
#include "ops/patchup.h"

namespace {

using manifold_mixup::LamMode;
using manifold_mixup::Method;
using manifold_mixup::Mixer;
using manifold_mixup::MixerOptions;

MixerOptions options(double alpha, uint64_t seed) {
  MixerOptions o;
  o.alpha = alpha;
  o.input_mixup = false;
  o.seed = seed;
  return o;
}

TEST(LamModes, BatchModeSharesOneUnfoldedDrawPerBatch) {
  MixerOptions o = options(2.0, 1);
  o.lam_mode = LamMode::Batch;
  o.fold = false;
  Mixer m(o);
  m.add_point("p");
  std::vector<float> first;
  for (int b = 0; b < 400; ++b) {
    m.begin_batch(16, torch::kCPU);
    EXPECT_TRUE(torch::equal(m.lam(), m.lam()[0].expand({16})));
    first.push_back(m.lam()[0].item<float>());
    m.end_batch();
  }
  const auto lam = torch::tensor(first, torch::kDouble);
  // Beta(2, 2): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.05; unfolded, half below 1/2.
  EXPECT_NEAR(lam.mean().item<double>(), 0.5, 0.03);
  EXPECT_NEAR(lam.var().item<double>(), 0.05, 0.01);
  EXPECT_NEAR(lam.lt(0.5).to(torch::kDouble).mean().item<double>(), 0.5, 0.08);
}

TEST(LamModes, SampleModeUnfoldedDrawsEachSample) {
  MixerOptions o = options(2.0, 2);
  o.fold = false;
  Mixer m(o);
  m.begin_batch(20000, torch::kCPU);
  const auto lam = m.lam().to(torch::kDouble);
  EXPECT_NEAR(lam.mean().item<double>(), 0.5, 0.01);
  EXPECT_NEAR(lam.var().item<double>(), 0.05, 0.003);
  EXPECT_GT(lam.lt(0.5).to(torch::kDouble).mean().item<double>(), 0.45);
}

TEST(Prob, ASkippedBatchDrawsNothingChoosesNoPointAndIsCountedApart) {
  MixerOptions o = options(1.0, 3);
  o.prob = 0.3;
  Mixer m(o);
  m.add_point("p");
  int64_t skipped = 0;
  for (int b = 0; b < 300; ++b) {
    const int64_t chosen = m.begin_batch(5, torch::kCPU);
    if (chosen == Mixer::kNoPoint) {
      ++skipped;
      EXPECT_TRUE(torch::equal(m.lam(), torch::ones({5})));
      EXPECT_TRUE(torch::equal(m.perm(), torch::arange(5)));
    }
    m.point_output(0, torch::ones({5, 2}));
    EXPECT_EQ(m.mixed(), chosen == 0);
    m.end_batch();
  }
  EXPECT_EQ(m.skipped_batches(), skipped);
  EXPECT_EQ(m.unmixed_batches(), 0);  // skipping is by design, not a point that failed to mix
  EXPECT_NEAR(double(skipped) / 300, 0.7, 0.08);
  m.reset_counters();
  EXPECT_EQ(m.skipped_batches(), 0);
}

TEST(Prob, OneTakesNoExtraDrawAndBadValuesAreRefused) {
  MixerOptions plain = options(1.0, 4), with_prob = options(1.0, 4);
  with_prob.prob = 1.0;
  Mixer a(plain), b(with_prob);
  a.begin_batch(8, torch::kCPU);
  b.begin_batch(8, torch::kCPU);
  EXPECT_TRUE(torch::equal(a.lam(), b.lam()));
  EXPECT_TRUE(torch::equal(a.perm(), b.perm()));
  for (double bad : {-0.1, 1.5, std::nan("")}) {
    MixerOptions o = options(1.0, 5);
    o.prob = bad;
    EXPECT_THROW(Mixer{o}, manifold_mixup::ArgumentError) << bad;
  }
}

TEST(PatchUp, AKeyDrawsOneMaskWhateverTheBatchAndTheOpIsTheBlendInsideIt) {
  const auto x = torch::randn({3, 2, 9, 9});
  const auto perm = torch::tensor({2, 0, 1}), lam = torch::tensor({0.25f, 0.5f, 1.f});
  const auto [out, mask] = manifold_mixup::patchup(x, perm, lam, torch::tensor(int64_t{77}), 3, 0.9);
  const auto [out2, mask2] = manifold_mixup::patchup(x * 2, perm, lam, torch::tensor(int64_t{77}), 3, 0.9);
  const auto [out3, mask3] = manifold_mixup::patchup(x, perm, lam, torch::tensor(int64_t{78}), 3, 0.9);
  EXPECT_TRUE(torch::equal(mask, mask2));
  EXPECT_FALSE(torch::equal(mask, mask3));
  EXPECT_EQ(mask.sizes(), torch::IntArrayRef({2, 9, 9}));
  const auto l = lam.view({3, 1, 1, 1});
  EXPECT_TRUE(torch::allclose(out, (1 - mask) * x + mask * (l * x + (1 - l) * x.index_select(0, perm))));
  EXPECT_TRUE(torch::equal(out[2], x[2]));  // lam 1: a copy
}

TEST(PatchUp, TheMixerWeighsTargetsByTheBlocksAndRefusesWhatIsNoFeatureMap) {
  for (Method method : {Method::PatchUpSoft, Method::PatchUpHard}) {
    MixerOptions o = options(2.0, 6);
    o.method = method;
    o.patchup_block = 3;
    Mixer m(o);
    m.add_point("conv");
    m.begin_batch(4, torch::kCPU);
    const auto h = torch::randn({4, 3, 6, 6});
    EXPECT_TRUE(torch::equal(m.target_weights(), m.lam()));  // before the forward
    const auto out = m.point_output(0, h);
    const auto [again, mask] =
        manifold_mixup::patchup(h, m.perm(), m.lam(), m.key(), o.patchup_block, o.patchup_gamma);
    EXPECT_TRUE(torch::equal(out, again));  // the batch's key: the same mask each forward
    EXPECT_TRUE(torch::allclose(m.target_weights(), 1 - mask.mean() * (1 - m.lam())));
    if (method == Method::PatchUpHard) EXPECT_TRUE(torch::equal(m.lam(), torch::zeros({4})));
    const auto logits = torch::randn({4, 5}, torch::requires_grad());
    const auto y = torch::tensor({0, 1, 2, 3});
    const auto w = m.target_weights();
    EXPECT_TRUE(torch::allclose(
        m.mixed_cross_entropy(logits, y),
        w * torch::cross_entropy_loss(logits, y, {}, at::Reduction::None) +
            (1 - w) * torch::cross_entropy_loss(logits, y.index_select(0, m.perm()), {}, at::Reduction::None)));
    m.begin_forward();
    EXPECT_THROW(m.point_output(0, torch::randn({4, 3})), manifold_mixup::ArgumentError);
    EXPECT_THROW(m.record_point_mixed(0, 1), manifold_mixup::ArgumentError);  // no mask
    m.end_batch();
  }
  MixerOptions bad = options(1.0, 7);
  bad.method = Method::PatchUpSoft;
  bad.patchup_block = 2;
  EXPECT_THROW(Mixer{bad}, manifold_mixup::ArgumentError);
  bad.patchup_block = 3;
  bad.patchup_gamma = 2;
  EXPECT_THROW(Mixer{bad}, manifold_mixup::ArgumentError);
}

TEST(NoisyFeatureMixup, TheMixerMixesWithItsLevelsAndKeyAndABackwardNeedsNoStoredNoise) {
  MixerOptions o = options(1.0, 8);
  o.add_noise = 0.4;
  o.mult_noise = 0.2;
  Mixer m(o);
  m.add_point("h");
  m.begin_batch(5, torch::kCPU);
  const auto noise = m.noise();
  ASSERT_TRUE(noise.defined());
  EXPECT_EQ(noise.sizes(), torch::IntArrayRef({2}));
  // Beta(2, 5) draws times the levels: within (0, level).
  EXPECT_GT(noise[0].item<float>(), 0.f);
  EXPECT_LT(noise[0].item<float>(), 0.4f);
  EXPECT_GT(noise[1].item<float>(), 0.f);
  EXPECT_LT(noise[1].item<float>(), 0.2f);
  const auto h = torch::randn({5, 3, 4}, torch::requires_grad());
  const auto out = m.point_output(0, h);
  EXPECT_TRUE(torch::equal(out, manifold_mixup::mix(h, m.perm(), m.lam(), noise, m.key())));
  EXPECT_FALSE(torch::allclose(out, manifold_mixup::mix(h, m.perm(), m.lam())));
  // The gradient of <g, (1 + mult U) mix(h)>: mix's backward of (1 + mult U) g, U drawn again.
  const auto g = torch::randn({5, 3, 4});
  const auto grad = torch::autograd::grad({out}, {h}, {g})[0];
  const auto scale = manifold_mixup::mix(torch::ones({5, 3, 4}), torch::arange(5), torch::ones({5}),
                                         torch::stack({torch::zeros({}), noise[1]}), m.key());
  EXPECT_TRUE(torch::allclose(grad, manifold_mixup::detail::_mix_backward(g * scale, m.perm(), m.lam()),
                              1e-5, 1e-6));
  m.end_batch();
  MixerOptions bad = o;
  bad.method = manifold_mixup::Method::PatchUpHard;
  EXPECT_THROW(Mixer{bad}, manifold_mixup::ArgumentError);
  bad = o;
  bad.mult_noise = -0.1;
  EXPECT_THROW(Mixer{bad}, manifold_mixup::ArgumentError);
}

}  // namespace
