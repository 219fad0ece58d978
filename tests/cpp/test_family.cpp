// The manifold mixup family from C++: lambda modes, prob, no Python in the process.
#include <gtest/gtest.h>
#include <torch/types.h>

#include "errors.h"
#include "mixer.h"

namespace {

using manifold_mixup::LamMode;
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

}  // namespace
