// The Mixer from C++: the law of the weights, permutations, the choice of one point per
// batch, reproducibility, mixed losses, schedules and misuse.
#include <gtest/gtest.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/nll_loss_nd.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <cfloat>
#include <cmath>

#include "errors.h"
#include "mixer.h"

namespace {

using manifold_mixup::ClassLossOptions;
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

TEST(Mixer, SubnormalAlphaGivesWeightsOfOneNotNaN) {
  // Each log-uniform divided by a subnormal alpha alone overflows to -inf (and -inf - -inf is
  // NaN): the weights must be the law's limit instead, 1 (no mixing).
  for (double alpha : {5e-324, 1e-310, DBL_MIN, 1e-300}) {
    Mixer m(options(alpha, true, 8));
    m.begin_batch(4096, torch::kCPU);
    EXPECT_FALSE(m.lam().isnan().any().item<bool>()) << alpha;
    EXPECT_TRUE(torch::equal(m.lam(), torch::ones({4096}))) << alpha;
  }
}

// Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs.
double ks_statistic(torch::Tensor a, torch::Tensor b) {
  a = std::get<0>(a.to(torch::kDouble).sort());
  b = std::get<0>(b.to(torch::kDouble).sort());
  const auto pa = a.data_ptr<double>(), pb = b.data_ptr<double>();
  const int64_t na = a.numel(), nb = b.numel();
  int64_t i = 0, j = 0;
  double gap = 0;
  while (i < na && j < nb) {
    const double v = std::min(pa[i], pb[j]);
    while (i < na && pa[i] <= v) ++i;
    while (j < nb && pb[j] <= v) ++j;
    gap = std::max(gap, std::abs(double(i) / na - double(j) / nb));
  }
  return gap;
}

TEST(Mixer, WeightsFollowTorchsBetaLawFolded) {
  // Against torch's own Beta sampler (a Dirichlet of two), folded alike, and the closed-form
  // mean of the folded law, 1/2 + 4^-a / (a B(a, a)). Fixed seeds: the outcome never changes;
  // a KS statistic of 0.025 at n = 20000 each is a p-value below 1e-5 for equal laws.
  const int64_t n = 20000;
  for (double alpha : {0.1, 0.4, 1.0, 2.0, 8.0}) {
    Mixer m(options(alpha, true, 21));
    m.begin_batch(n, torch::kCPU);
    const auto ours = m.lam();
    torch::manual_seed(22);
    const auto l = at::_sample_dirichlet(torch::full({n, 2}, alpha, torch::kDouble)).select(1, 0);
    const auto torchs = torch::maximum(l, 1 - l).to(torch::kFloat);  // lam's dtype, rounded alike
    EXPECT_LT(ks_statistic(ours, torchs), 0.025) << "alpha " << alpha;
    const double log_beta = 2 * std::lgamma(alpha) - std::lgamma(2 * alpha);
    const double mean = 0.5 + std::exp(-alpha * std::log(4.0) - std::log(alpha) - log_beta);
    // The folded law's standard deviation is below 0.15, so the mean's error is below 0.0011.
    EXPECT_NEAR(ours.mean().item<double>(), mean, 0.005) << "alpha " << alpha;
  }
}

TEST(Mixer, SmallBatchesGetAPermutationAndWeightsInRange) {
  Mixer m(options(0.4, true, 6));
  for (int64_t b : {1, 2, 3, 7, 64}) {
    m.begin_batch(b, torch::kCPU);
    EXPECT_EQ(m.perm().scalar_type(), torch::kLong);
    EXPECT_EQ(m.lam().scalar_type(), torch::kFloat);
    EXPECT_TRUE(m.perm().is_contiguous() && m.lam().is_contiguous());
    EXPECT_TRUE(torch::equal(std::get<0>(m.perm().sort()), torch::arange(b))) << b;
    EXPECT_GE(m.lam().min().item<float>(), 0.5f);
    EXPECT_LE(m.lam().max().item<float>(), 1.0f);
    m.end_batch();
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
  ASSERT_EQ(m.begin_batch(10, torch::kCPU), Mixer::kInputPoint);  // the only candidate
  m.mix_input(torch::randn({10, 1}));  // the batch mixed, so its loss and targets are mixed
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
  o.schedule = Schedule{ScheduleKind::Linear, /*alpha_min=*/0.0, /*alpha_max=*/1.0, /*total_steps=*/10};
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

// ---- did this batch mix? -------------------------------------------------------------------

TEST(MixerMixed, OnlyTheChosenPointsActualMixingCounts) {
  Mixer m(options(1.0, true, 21));
  m.add_point("a");
  m.add_point("b");
  const auto y = torch::randn({8, 2});
  int seen_point = 0, seen_input = 0;
  for (int b = 0; b < 60; ++b) {
    const int64_t chosen = m.begin_batch(8, torch::kCPU);
    EXPECT_FALSE(m.mixed());  // nothing has run yet
    // Before the forward the losses and targets are the plain ones.
    EXPECT_TRUE(torch::equal(m.mix_targets(y), y));
    const auto x = torch::randn({8, 2});
    m.mix_input(x);
    m.point_output(0, x);
    m.point_output(1, x);
    EXPECT_TRUE(m.mixed());
    seen_input += chosen == Mixer::kInputPoint;
    seen_point += chosen >= 0;
    const auto l = m.lam().unsqueeze(1);
    EXPECT_TRUE(torch::allclose(m.mix_targets(y), l * y + (1 - l) * y.index_select(0, m.perm())));
    m.end_batch();
  }
  EXPECT_GT(seen_input, 0);
  EXPECT_GT(seen_point, 0);
  EXPECT_EQ(m.unmixed_batches(), 0);
}

TEST(MixerMixed, ABatchWhoseChosenPointNeverRanTrainsPlainlyAndIsCounted) {
  Mixer m(options(1.0, false, 22));
  m.add_point("never_runs");
  const auto logits = torch::randn({6, 4});
  const auto labels = torch::randint(4, {6}, torch::kLong);
  const auto own = torch::rand({6, 3}), other = torch::rand({6, 3});
  const auto y = torch::randn({6, 2});
  for (int b = 0; b < 5; ++b) {
    ASSERT_EQ(m.begin_batch(6, torch::kCPU), 0);
    EXPECT_TRUE(torch::allclose(m.mixed_cross_entropy(logits, labels),
                                at::cross_entropy_loss(logits, labels, {}, at::Reduction::None)));
    EXPECT_TRUE(torch::equal(m.mixed_loss(own, other), own));
    EXPECT_TRUE(torch::equal(m.mix_targets(y), y));
    m.end_batch();
  }
  EXPECT_EQ(m.unmixed_batches(), 5);
  EXPECT_EQ(m.point_mixes()[0], 0);
  // A batch of alpha 0 chose nothing, so it is not an unmixed batch.
  m.set_alpha(0);
  m.begin_batch(6, torch::kCPU);
  m.end_batch();
  EXPECT_EQ(m.unmixed_batches(), 5);
  m.reset_counters();
  EXPECT_EQ(m.unmixed_batches(), 0);
}

TEST(MixerMixed, AHookThatMixesItselfRecordsTheMixAndItsRepeats) {
  Mixer m(options(1.0, false, 23));
  m.add_point("p");
  ASSERT_EQ(m.begin_batch(5, torch::kCPU), 0);
  EXPECT_THROW(m.record_point_mixed(0, 0), c10::Error);  // the mixed call is one of the calls
  m.record_point_mixed(0, 3);
  EXPECT_TRUE(m.mixed());
  EXPECT_EQ(m.point_mixes()[0], 1);
  EXPECT_EQ(m.repeated_calls(), 2);
  EXPECT_THROW(m.record_point_mixed(0, 1), c10::Error);  // once per batch
  const auto own = torch::rand({5}), other = torch::rand({5});
  EXPECT_TRUE(torch::allclose(m.mixed_loss(own, other), m.lam() * own + (1 - m.lam()) * other));
  m.end_batch();
  EXPECT_EQ(m.unmixed_batches(), 0);
  EXPECT_THROW(m.record_point_mixed(0, 1), c10::Error);  // no batch
  Mixer n(options(1.0, true, 24));
  n.add_point("p");
  int64_t chosen;
  while ((chosen = n.begin_batch(4, torch::kCPU)) == 0) n.end_batch();
  EXPECT_THROW(n.record_point_mixed(0, 1), c10::Error);  // not the chosen point
  n.end_batch();
}

TEST(MixerMixed, MixedCrossEntropySharesOneLogSoftmaxAndIgnoresMinus100) {
  Mixer m(options(1.0, true, 25));
  m.begin_batch(6, torch::kCPU);
  m.mix_input(torch::randn({6, 1}));
  ASSERT_TRUE(m.mixed());
  auto logits = torch::randn({6, 4}, torch::requires_grad());
  auto y = torch::randint(4, {6}, torch::kLong);
  y[2] = -100;
  const auto got = m.mixed_cross_entropy(logits, y);
  const auto ce = [&](const at::Tensor& t) {
    return at::cross_entropy_loss(logits, t, {}, at::Reduction::None);
  };
  const auto expected = m.lam() * ce(y) + (1 - m.lam()) * ce(y.index_select(0, m.perm()));
  EXPECT_TRUE(torch::allclose(got, expected, 1e-5, 1e-6));
  const auto g1 = torch::autograd::grad({got.sum()}, {logits})[0];
  const auto g2 = torch::autograd::grad({expected.sum()}, {logits})[0];
  EXPECT_TRUE(torch::allclose(g1, g2, 1e-5, 1e-6));
  // bfloat16 logits: computed in float32, as autocast computes cross-entropy.
  const auto lb = logits.detach().to(torch::kBFloat16);
  const auto gb = m.mixed_cross_entropy(lb, y);
  EXPECT_EQ(gb.scalar_type(), torch::kFloat);
  m.end_batch();
}

// ---- mixed classification losses reduced as torch reduces them ---------------------------

// A batch of 6 that mixed at the input, with lam ~ Beta(alpha, alpha) folded.
Mixer& mixed_batch(Mixer& m) {
  EXPECT_EQ(m.begin_batch(6, torch::kCPU), Mixer::kInputPoint);
  m.mix_input(torch::zeros({6, 1}));
  EXPECT_TRUE(m.mixed());
  return m;
}

struct LossCase {
  const char* name;
  std::vector<int64_t> shape;  // logits: [B, C] or [B, C, H, W]
  bool weighted;
  int64_t ignore_index;
  bool ignore_half;
  double label_smoothing;
};

std::vector<LossCase> loss_cases() {
  return {{"plain", {6, 4}, false, -100, false, 0.0},
          {"weight", {6, 4}, true, -100, false, 0.0},
          {"ignore", {6, 4}, false, -100, true, 0.0},
          {"smoothing", {6, 4}, false, -100, false, 0.2},
          {"weight+ignore+smoothing", {6, 4}, true, -100, true, 0.1},
          {"segmentation 255", {6, 4, 3, 5}, true, 255, true, 0.1}};
}

std::pair<at::Tensor, at::Tensor> loss_data(const LossCase& c, uint64_t seed) {
  torch::manual_seed(seed);
  const auto logits = torch::randn(c.shape);
  auto target_shape = c.shape;
  target_shape.erase(target_shape.begin() + 1);
  auto y = torch::randint(c.shape[1], target_shape, torch::kLong);
  if (c.ignore_half) {
    const auto flat = y.view({-1});
    flat.index_fill_(0, torch::randperm(flat.numel()).narrow(0, 0, flat.numel() / 2), c.ignore_index);
  }
  return {logits, y};
}

ClassLossOptions loss_options(const LossCase& c, at::Reduction::Reduction reduction) {
  ClassLossOptions o;
  if (c.weighted) o.weight = torch::tensor({0.3f, 2.0f, 1.0f, 4.5f});
  o.ignore_index = c.ignore_index;
  o.label_smoothing = c.label_smoothing;
  o.reduction = reduction;
  return o;
}

// The definition in ClassLossOptions, element by element: per-element losses and class weights of
// both targets from the log-probabilities themselves, mixed, then summed (and divided).
at::Tensor reference_mixed_loss(const at::Tensor& log_probs, const at::Tensor& y, const Mixer& m,
                                const ClassLossOptions& o) {
  const int64_t c = log_probs.size(1);
  const auto lp = log_probs.movedim(1, -1);  // [B, d..., C]
  const auto w = o.weight.defined() ? o.weight : torch::ones({c});
  const double eps = o.label_smoothing;
  auto per_element = [&](const at::Tensor& t) {
    const auto kept = (t != o.ignore_index).to(torch::kFloat);
    const auto safe = t.masked_fill(t == o.ignore_index, 0);
    const auto wt = w.index_select(0, safe.flatten()).view(safe.sizes()) * kept;
    const auto nll = -lp.gather(-1, safe.unsqueeze(-1)).squeeze(-1) * wt;
    const auto smooth = -(lp * w).sum(-1) * kept;
    return std::make_pair((1 - eps) * nll + (eps / c) * smooth, wt);
  };
  std::vector<int64_t> shape(y.dim(), 1);
  shape[0] = y.size(0);
  const auto lam = m.lam().view(shape);
  const auto [l_own, w_own] = per_element(y);
  const auto [l_other, w_other] = per_element(y.index_select(0, m.perm()));
  const auto num = lam * l_own + (1 - lam) * l_other;
  if (o.reduction == at::Reduction::None) return num;
  if (o.reduction == at::Reduction::Sum) return num.sum();
  return num.sum() / (lam * w_own + (1 - lam) * w_other).sum();
}

const std::vector<at::Reduction::Reduction> kReductions = {at::Reduction::Mean, at::Reduction::Sum,
                                                           at::Reduction::None};

TEST(MixedLosses, WithLamOneTheyAreTorchsLossesAndUnmixedExactlyThem) {
  Mixer ones(options(1e-30, true, 30));
  mixed_batch(ones);
  ASSERT_TRUE(torch::equal(ones.lam(), torch::ones({6})));  // 1e-30 folds to exactly 1 in float32
  Mixer unmixed(options(1.0, false, 31));
  unmixed.add_point("never_runs");
  ASSERT_EQ(unmixed.begin_batch(6, torch::kCPU), 0);
  for (const auto& c : loss_cases()) {
    for (const auto r : kReductions) {
      SCOPED_TRACE(c.name + std::string(" reduction ") + std::to_string(int(r)));
      const auto [logits, y] = loss_data(c, 32);
      const auto o = loss_options(c, r);
      const auto torchs = at::cross_entropy_loss(logits, y, o.weight, r, o.ignore_index, o.label_smoothing);
      const auto got = ones.mixed_cross_entropy(logits, y, o);
      EXPECT_EQ(got.sizes(), torchs.sizes());
      EXPECT_TRUE(torch::allclose(got, torchs, 1e-5, 1e-6));
      EXPECT_TRUE(torch::equal(unmixed.mixed_cross_entropy(logits, y, o), torchs));
      if (c.label_smoothing == 0) {
        const auto lp = torch::log_softmax(logits, 1);
        const auto nll = at::nll_loss_nd(lp, y, o.weight, r, o.ignore_index);
        EXPECT_TRUE(torch::allclose(ones.mixed_nll_loss(lp, y, o), nll, 1e-5, 1e-6));
        EXPECT_TRUE(torch::equal(unmixed.mixed_nll_loss(lp, y, o), nll));
      }
    }
  }
}

TEST(MixedLosses, AMixedBatchFollowsTheDefinitionInValueAndGradient) {
  Mixer m(options(1.0, true, 33));
  mixed_batch(m);
  ASSERT_TRUE((m.lam() < 0.999).any().item<bool>());
  for (const auto& c : loss_cases()) {
    for (const auto r : kReductions) {
      SCOPED_TRACE(c.name + std::string(" reduction ") + std::to_string(int(r)));
      auto [logits, y] = loss_data(c, 34);
      logits.requires_grad_(true);
      const auto o = loss_options(c, r);
      const auto got = m.mixed_cross_entropy(logits, y, o);
      const auto expected = reference_mixed_loss(torch::log_softmax(logits, 1), y, m, o);
      EXPECT_TRUE(torch::allclose(got, expected, 1e-5, 1e-6));
      const auto g1 = torch::autograd::grad({got.sum()}, {logits})[0];
      const auto g2 = torch::autograd::grad({expected.sum()}, {logits})[0];
      EXPECT_GT(g1.abs().sum().item<float>(), 0);
      EXPECT_TRUE(torch::allclose(g1, g2, 1e-5, 1e-6));
      if (c.label_smoothing == 0) {  // the NLL of the same log-probabilities is the same loss
        const auto lp = torch::log_softmax(logits, 1);
        EXPECT_TRUE(torch::allclose(m.mixed_nll_loss(lp, y, o), got, 1e-5, 1e-6));
      }
      // Reduced-precision logits: computed in float32, as autocast computes cross-entropy.
      const auto half = m.mixed_cross_entropy(logits.detach().to(torch::kBFloat16), y, o);
      EXPECT_EQ(half.scalar_type(), torch::kFloat);
      const auto lp16 = torch::log_softmax(logits.detach().to(torch::kBFloat16).to(torch::kFloat), 1);
      EXPECT_TRUE(torch::allclose(half, reference_mixed_loss(lp16, y, m, o), 1e-5, 1e-6));
    }
  }
  m.end_batch();
}

TEST(MixedLosses, WrongOptionsAndShapesAreRefusedNamingTheArgument) {
  Mixer m(options(1.0, true, 35));
  mixed_batch(m);
  const auto logits = torch::randn({6, 4, 3});
  const auto y = torch::randint(4, {6, 3}, torch::kLong);
  auto refused = [&](const at::Tensor& l, const at::Tensor& t, const ClassLossOptions& o,
                     const std::string& words, bool nll = false) {
    try {
      nll ? m.mixed_nll_loss(l, t, o) : m.mixed_cross_entropy(l, t, o);
      ADD_FAILURE() << "accepted: " << words;
    } catch (const manifold_mixup::ArgumentError& e) {
      EXPECT_NE(std::string(e.what_without_backtrace()).find(words), std::string::npos)
          << e.what_without_backtrace();
    }
  };
  refused(logits, torch::randint(4, {6, 4}, torch::kLong), {}, "target must be int64 class indices of shape [6, 3]");
  refused(logits, y.to(torch::kInt), {}, "target must be int64");
  refused(torch::randn({6}), torch::randint(4, {6}, torch::kLong), {}, "the input must have shape [6, C, ...]");
  ClassLossOptions o;
  o.weight = torch::ones({3});
  refused(logits, y, o, "weight must be a floating tensor of the 4 classes");
  o.weight = torch::ones({4}, torch::kLong);
  refused(logits, y, o, "weight must be a floating tensor of the 4 classes");
  o = {};
  o.label_smoothing = 1.5;
  refused(logits, y, o, "label_smoothing must be in [0, 1]");
  o.label_smoothing = 0.1;
  refused(logits, y, o, "label_smoothing must be 0", /*nll=*/true);
  m.end_batch();
}

TEST(MixerMixed, MixTargetsRefusesIntegerTargetsWhetherOrNotTheBatchMixed) {
  Mixer m(options(1.0, false, 26));
  m.add_point("p");
  m.begin_batch(4, torch::kCPU);
  EXPECT_FALSE(m.mixed());
  EXPECT_THROW(m.mix_targets(torch::zeros({4}, torch::kLong)), c10::Error);
  EXPECT_THROW(m.mix_targets(torch::zeros({5})), c10::Error);  // wrong batch size, even unmixed
  m.end_batch();
}

TEST(MixerMixed, RetainPointsKeepsCountersAndRenumbers) {
  Mixer m(options(1.0, false, 27));
  for (const char* n : {"a", "b", "c"}) m.add_point(n);
  for (int b = 0; b < 30; ++b) {
    const int64_t c = m.begin_batch(4, torch::kCPU);
    m.point_output(c, torch::randn({4, 1}));
    m.end_batch();
  }
  const auto before = m.point_mixes();
  m.retain_points({0, 2});
  EXPECT_EQ(m.point_names(), (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(m.point_mixes(), (std::vector<int64_t>{before[0], before[2]}));
  EXPECT_THROW(m.retain_points({1, 0}), c10::Error);
  EXPECT_THROW(m.retain_points({2}), c10::Error);
  m.begin_batch(4, torch::kCPU);
  EXPECT_THROW(m.retain_points({0}), c10::Error);  // during a batch
  m.end_batch();
}

}  // namespace
