// The Mixer from C++: the law of the weights, permutations, the choice of one point per
// batch, reproducibility, mixed losses, schedules and misuse.
#include <gtest/gtest.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cmath>

#include "mixer.h"

namespace {

using manifold_mixup::Mixer;
using manifold_mixup::MixerOptions;
using manifold_mixup::Schedule;
using manifold_mixup::ScheduleKind;

MixerOptions options(double alpha, bool input = true, std::optional<uint64_t> seed = std::nullopt) {
  MixerOptions o;
  o.alpha = alpha;
  o.input_mixup = input;
  o.seed = seed;
  return o;
}

TEST(Mixer, WeightsAreFoldedBetaAndPermIsAPermutation) {
  Mixer m(options(1.0, true, 7));
  m.begin_batch(20000, torch::kCPU);
  const auto lam = m.lam();
  EXPECT_EQ(lam.scalar_type(), torch::kFloat);
  EXPECT_EQ(lam.sizes(), torch::IntArrayRef({20000}));
  EXPECT_GE(lam.min().item<float>(), 0.5f);
  EXPECT_LE(lam.max().item<float>(), 1.0f);
  // Beta(1, 1) is uniform; folded to max(l, 1 - l) it is uniform on [0.5, 1]: mean 0.75.
  EXPECT_NEAR(lam.mean().item<double>(), 0.75, 0.01);
  EXPECT_TRUE(torch::equal(std::get<0>(m.perm().sort()), torch::arange(20000)));
}

TEST(Mixer, SmallAlphaKeepsWeightsNearOne) {
  // Beta(0.1, 0.1) puts most mass near 0 and 1, so folded weights are mostly near 1.
  Mixer m(options(0.1, true, 3));
  m.begin_batch(5000, torch::kCPU);
  EXPECT_GT(m.lam().gt(0.9).to(torch::kFloat).mean().item<double>(), 0.6);
  EXPECT_FALSE(m.lam().isnan().any().item<bool>());
}

TEST(Mixer, TinyAlphaMixesAlmostNothing) {
  // As alpha -> 0, Beta(alpha, alpha) puts its mass on 0 and 1: folded weights go to 1,
  // never to 0.5 (where an underflowing sampler would land, mixing the most).
  for (double alpha : {1e-6, 1e-4, 1e-3}) {
    Mixer m(options(alpha, true, 4));
    m.begin_batch(5000, torch::kCPU);
    EXPECT_GT(m.lam().gt(0.99).to(torch::kFloat).mean().item<double>(), 0.9) << alpha;
    EXPECT_FALSE(m.lam().isnan().any().item<bool>());
    EXPECT_GE(m.lam().min().item<float>(), 0.5f);
  }
}

TEST(Mixer, AlphaZeroMeansNoMixing) {
  Mixer m(options(0.0, true, 1));
  m.add_point("a");
  for (int b = 0; b < 20; ++b) {
    EXPECT_EQ(m.begin_batch(8, torch::kCPU), Mixer::kNoPoint);
    EXPECT_TRUE(torch::equal(m.lam(), torch::ones({8})));
    const auto x = torch::randn({8, 3});
    EXPECT_TRUE(torch::equal(m.point_output(0, x), x));
    EXPECT_TRUE(torch::equal(m.mix_input(x), x));
    m.end_batch();
  }
  EXPECT_EQ(m.point_mixes()[0] + m.input_mixes(), 0);
}

TEST(Mixer, ExactlyOnePointMixesPerBatchAndEachIsChosen) {
  Mixer m(options(0.4, true, 11));
  for (const char* name : {"a", "b", "c"}) m.add_point(name);
  const int batches = 400;
  for (int b = 0; b < batches; ++b) {
    const int64_t chosen = m.begin_batch(16, torch::kCPU);
    const auto x = torch::randn({16, 2});
    const auto xin = m.mix_input(x);
    EXPECT_EQ(!torch::equal(xin, x), chosen == Mixer::kInputPoint);
    for (int64_t p = 0; p < 3; ++p) {
      const auto out = m.point_output(p, x);
      EXPECT_EQ(!torch::equal(out, x), p == chosen) << "point " << p << " chosen " << chosen;
    }
    m.end_batch();
  }
  int64_t total = m.input_mixes();
  for (int64_t c : m.point_mixes()) {
    total += c;
    // Four candidates chosen uniformly: each about 100 times of 400.
    EXPECT_GT(c, 60);
    EXPECT_LT(c, 140);
  }
  EXPECT_GT(m.input_mixes(), 60);
  EXPECT_EQ(total, batches);
  EXPECT_EQ(m.batches(), batches);
}

TEST(Mixer, ASecondCallInTheSameBatchIsLeftAloneAndCounted) {
  Mixer m(options(0.4, false, 5));
  m.add_point("only");
  ASSERT_EQ(m.begin_batch(6, torch::kCPU), 0);
  const auto x = torch::randn({6, 3});
  EXPECT_FALSE(torch::equal(m.point_output(0, x), x));
  EXPECT_TRUE(torch::equal(m.point_output(0, x), x));
  EXPECT_EQ(m.repeated_calls(), 1);
  EXPECT_EQ(m.point_mixes()[0], 1);
  m.end_batch();
  // Outside a batch nothing mixes.
  EXPECT_TRUE(torch::equal(m.point_output(0, x), x));
}

TEST(Mixer, SameSeedSameDraws) {
  Mixer a(options(0.4, true, 42)), b(options(0.4, true, 42)), c(options(0.4, true, 43));
  for (Mixer* m : {&a, &b, &c}) m->add_point("p");
  bool differs = false;
  for (int i = 0; i < 5; ++i) {
    const auto ca = a.begin_batch(16, torch::kCPU), cb = b.begin_batch(16, torch::kCPU);
    c.begin_batch(16, torch::kCPU);
    EXPECT_EQ(ca, cb);
    EXPECT_TRUE(torch::equal(a.lam(), b.lam()));
    EXPECT_TRUE(torch::equal(a.perm(), b.perm()));
    differs = differs || !torch::equal(a.lam(), c.lam());
    for (Mixer* m : {&a, &b, &c}) m->end_batch();
  }
  EXPECT_TRUE(differs);
}

TEST(Mixer, WithoutSeedTorchManualSeedGoverns) {
  Mixer a(options(0.4)), b(options(0.4));
  torch::manual_seed(123);
  a.begin_batch(16, torch::kCPU);
  torch::manual_seed(123);
  b.begin_batch(16, torch::kCPU);
  EXPECT_TRUE(torch::equal(a.lam(), b.lam()));
  EXPECT_TRUE(torch::equal(a.perm(), b.perm()));
}

TEST(Mixer, MixedCrossEntropyIsTheWeightedSumOfTheTwoLosses) {
  Mixer m(options(1.0, true, 9));
  m.begin_batch(10, torch::kCPU);
  const auto logits = torch::randn({10, 4});
  const auto y = torch::randint(4, {10}, torch::kLong);
  const auto got = m.mixed_cross_entropy(logits, y);
  const auto logp = torch::log_softmax(logits, 1);
  const auto own = -logp.gather(1, y.unsqueeze(1)).squeeze(1);
  const auto other = -logp.gather(1, y.index_select(0, m.perm()).unsqueeze(1)).squeeze(1);
  EXPECT_TRUE(torch::allclose(got, m.lam() * own + (1 - m.lam()) * other, 1e-5, 1e-6));
  // Regression targets are mixed like any tensor.
  const auto t = torch::randn({10, 2});
  const auto l = m.lam().unsqueeze(1);
  EXPECT_TRUE(torch::allclose(m.mix_targets(t), l * t + (1 - l) * t.index_select(0, m.perm())));
}

TEST(Mixer, MisuseIsRefusedWithAMessage) {
  Mixer m(options(0.4, true, 1));
  EXPECT_THROW(m.mix(torch::randn({4})), c10::Error);              // no batch
  EXPECT_THROW(m.mixed_cross_entropy(torch::randn({4, 2}), torch::zeros({4}, torch::kLong)), c10::Error);
  EXPECT_THROW(m.begin_batch(0, torch::kCPU), c10::Error);
  m.begin_batch(4, torch::kCPU);
  EXPECT_THROW(m.begin_batch(4, torch::kCPU), c10::Error);         // twice
  EXPECT_THROW(m.mix(torch::randn({5, 2})), c10::Error);          // wrong batch size
  EXPECT_THROW(m.add_point("late"), c10::Error);                   // during a batch
  EXPECT_THROW(m.mixed_cross_entropy(torch::randn({4, 2}), torch::zeros({4}, torch::kInt)), c10::Error);
  EXPECT_THROW(m.mixed_cross_entropy(torch::randn({4}), torch::zeros({4}, torch::kLong)), c10::Error);
  EXPECT_THROW(m.point_output(3, torch::randn({4})), c10::Error);  // no such point
  EXPECT_THROW(m.set_alpha(-1), c10::Error);
  EXPECT_THROW(m.set_alpha(NAN), c10::Error);
  EXPECT_THROW(Mixer(options(-0.5)), c10::Error);
  try {
    m.mix(torch::randn({5, 2}));
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find("begin_batch"), std::string::npos);
  }
}

TEST(Schedule, FollowsFastaiCurves) {
  Schedule s;
  s.alpha_min = 0.1;
  s.alpha_max = 0.7;
  s.total_steps = 100;
  const double pi = std::acos(-1.0);
  for (double p : {0.0, 0.25, 0.5, 1.0}) {
    s.kind = ScheduleKind::Linear;
    EXPECT_NEAR(s.alpha_at(p), 0.1 + 0.6 * p, 1e-12);
    s.kind = ScheduleKind::Cosine;
    EXPECT_NEAR(s.alpha_at(p), 0.1 + 0.6 * (1 - std::cos(pi * p)) / 2, 1e-12);
    s.kind = ScheduleKind::Exponential;
    EXPECT_NEAR(s.alpha_at(p), 0.1 * std::pow(7.0, p), 1e-12);
    s.kind = ScheduleKind::Polynomial;
    EXPECT_NEAR(s.alpha_at(p), 0.1 + 0.6 * p * p, 1e-12);
  }
  s.kind = ScheduleKind::Linear;
  EXPECT_NEAR(s.alpha_at_step(50), 0.4, 1e-12);
  EXPECT_NEAR(s.alpha_at_step(1000), 0.7, 1e-12);  // clamped at the end
  s.total_steps = 0;
  EXPECT_THROW(s.validate(), c10::Error);
}

TEST(Schedule, MixerFollowsItsScheduleFromZero) {
  MixerOptions o = options(0.0, true, 2);
  o.schedule.kind = ScheduleKind::Linear;
  o.schedule.alpha_min = 0.0;
  o.schedule.alpha_max = 1.0;
  o.schedule.total_steps = 10;
  Mixer m(o);
  m.add_point("p");
  EXPECT_EQ(m.alpha(), 0.0);
  EXPECT_EQ(m.begin_batch(4, torch::kCPU), Mixer::kNoPoint);  // alpha 0 at the start: no mixing
  m.end_batch();
  m.set_step(5);
  EXPECT_NEAR(m.alpha(), 0.5, 1e-12);
  EXPECT_NE(m.begin_batch(4, torch::kCPU), Mixer::kNoPoint);
  m.end_batch();
}

}  // namespace
