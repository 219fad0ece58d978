#include "mixer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/_standard_gamma.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/full.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/rand.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/sigmoid.h>
#include <c10/util/Exception.h>

#include <cfloat>
#include <cmath>

#include "ops/mix.h"

namespace manifold_mixup {

namespace {
void check_alpha(double alpha, const char* name) {
  TORCH_CHECK(std::isfinite(alpha) && alpha >= 0, name, " must be a finite number >= 0 ",
              "(0 means no mixing), got ", alpha);
}
}  // namespace

Mixer::Mixer(MixerOptions options) : options_(std::move(options)), alpha_(options_.alpha) {
  check_alpha(alpha_, "alpha");
  options_.schedule.validate();
  if (options_.seed) own_generator_ = at::make_generator<at::CPUGeneratorImpl>(*options_.seed);
  if (options_.schedule.kind != ScheduleKind::None) set_step(0);
}

void Mixer::set_alpha(double alpha) {
  check_alpha(alpha, "alpha");
  alpha_ = alpha;
}

void Mixer::set_step(int64_t step) {
  TORCH_CHECK(step >= 0, "step must be >= 0, got ", step);
  if (options_.schedule.kind != ScheduleKind::None) alpha_ = options_.schedule.alpha_at_step(step);
}

int64_t Mixer::add_point(const std::string& name) {
  TORCH_CHECK(!in_batch_, "add_point: cannot add a mixup point during a batch (call end_batch first)");
  names_.push_back(name);
  mixes_.push_back(0);
  fired_.push_back(false);
  return num_points() - 1;
}

void Mixer::clear_points() {
  TORCH_CHECK(!in_batch_, "clear_points: cannot remove mixup points during a batch (call end_batch first)");
  names_.clear();
  mixes_.clear();
  fired_.clear();
}

at::Generator Mixer::cpu_generator() const {
  return own_generator_ ? *own_generator_ : at::detail::getDefaultCPUGenerator();
}

int64_t Mixer::begin_batch(int64_t batch_size, at::Device device) {
  TORCH_CHECK(!in_batch_, "begin_batch: the previous batch has not ended (call end_batch first)");
  TORCH_CHECK(batch_size >= 1, "begin_batch: batch_size must be >= 1, got ", batch_size);
  // With our own seed everything is drawn from one CPU generator and moved to the device;
  // otherwise from the device's default generator, so torch.manual_seed governs it.
  const at::Device draw_on = own_generator_ ? at::Device(at::kCPU) : device;
  std::optional<at::Generator> gen;
  if (own_generator_) gen = *own_generator_;
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(draw_on);
  at::Tensor lam;
  if (alpha_ == 0) {
    lam = at::ones({batch_size}, f32);
  } else {
    // Beta(a, a) as G1 / (G1 + G2), G ~ Gamma(a), drawn in log space: Gamma(a) is
    // Gamma(a + 1) * U^(1/a), whose log stays finite for tiny a, where torch's Dirichlet
    // sampler underflows to 0.5 (the strongest mixing) just as a schedule leaves 0.
    // Folded: max(l, 1 - l) = sigmoid(|log G1 - log G2|).
    const auto f64 = f32.dtype(at::kDouble);
    const auto g = at::_standard_gamma(at::full({batch_size, 2}, alpha_ + 1, f64), gen);
    const auto u = at::rand({batch_size, 2}, gen, f64).clamp_min(DBL_MIN);
    const auto log_g = g.log() + u.log() / alpha_;
    lam = at::sigmoid((log_g.select(1, 0) - log_g.select(1, 1)).abs()).to(at::kFloat);
  }
  auto perm = at::randperm(batch_size, gen, at::TensorOptions().dtype(at::kLong).device(draw_on));
  lam_ = lam.to(device);
  perm_ = perm.to(device);

  const int64_t candidates = num_points() + (options_.input_mixup ? 1 : 0);
  chosen_ = kNoPoint;
  if (alpha_ > 0 && candidates > 0) {
    const int64_t pick = at::randint(candidates, {1}, cpu_generator(), at::kLong).item<int64_t>();
    chosen_ = pick < num_points() ? pick : kInputPoint;
  }
  std::fill(fired_.begin(), fired_.end(), false);
  batch_size_ = batch_size;
  in_batch_ = true;
  ++batches_;
  return chosen_;
}

void Mixer::check_in_batch(const char* what) const {
  TORCH_CHECK(in_batch_, what, ": no batch has begun (call begin_batch first)");
}

at::Tensor Mixer::mix(const at::Tensor& t) const {
  check_in_batch("mix");
  TORCH_CHECK(t.defined(), "mix: the tensor to mix is undefined");
  TORCH_CHECK(t.dim() >= 1 && t.size(0) == batch_size_, "mix: the tensor must have the batch's ",
              batch_size_, " samples along dim 0 (as told to begin_batch), got shape ", t.sizes());
  TORCH_CHECK(t.device() == lam_.device(), "mix: the tensor must be on the batch's device (",
              lam_.device(), "), got ", t.device());
  return manifold_mixup::mix(t, perm_, lam_);
}

at::Tensor Mixer::mix_input(const at::Tensor& x) {
  check_in_batch("mix_input");
  if (chosen_ != kInputPoint) return x;
  auto out = mix(x);
  ++input_mixes_;
  return out;
}

at::Tensor Mixer::point_output(int64_t point, const at::Tensor& out) {
  TORCH_CHECK(point >= 0 && point < num_points(), "point_output: point must be in [0, ",
              num_points(), "), got ", point);
  if (!in_batch_ || point != chosen_) return out;
  if (fired_[point]) {
    ++repeated_calls_;
    return out;
  }
  auto mixed = mix(out);
  fired_[point] = true;
  ++mixes_[point];
  return mixed;
}

at::Tensor Mixer::mixed_loss(const at::Tensor& loss_own, const at::Tensor& loss_other) const {
  check_in_batch("mixed_loss");
  TORCH_CHECK(loss_own.defined() && loss_own.dim() >= 1 && loss_own.size(0) == batch_size_,
              "mixed_loss: loss_own must be an unreduced loss of shape [", batch_size_, ", ...]");
  TORCH_CHECK(loss_other.defined() && loss_other.sizes() == loss_own.sizes(),
              "mixed_loss: loss_other must have loss_own's shape ", loss_own.sizes());
  std::vector<int64_t> shape(loss_own.dim(), 1);
  shape[0] = batch_size_;
  const auto lam = lam_.to(loss_own.scalar_type()).view(shape);
  return lam * loss_own + (1 - lam) * loss_other;
}

at::Tensor Mixer::mixed_cross_entropy(const at::Tensor& logits, const at::Tensor& target) const {
  check_in_batch("mixed_cross_entropy");
  TORCH_CHECK(logits.defined() && logits.dim() == 2 && logits.size(0) == batch_size_,
              "mixed_cross_entropy: logits must have shape [", batch_size_, ", C], got ",
              logits.defined() ? c10::str(logits.sizes()) : std::string("undefined"));
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()),
              "mixed_cross_entropy: logits must be floating, got ", logits.scalar_type());
  TORCH_CHECK(target.defined() && target.scalar_type() == at::kLong && target.dim() == 1 &&
                  target.size(0) == batch_size_,
              "mixed_cross_entropy: target must be int64 class indices of shape [", batch_size_, "]");
  TORCH_CHECK(target.device() == logits.device(), "mixed_cross_entropy: target must be on the ",
              "logits' device (", logits.device(), "), got ", target.device());
  const auto none = at::Reduction::None;
  const auto own = at::cross_entropy_loss(logits, target, {}, none);
  const auto other = at::cross_entropy_loss(logits, target.index_select(0, perm_), {}, none);
  return mixed_loss(own, other);
}

void Mixer::end_batch() {
  in_batch_ = false;
  chosen_ = kNoPoint;
}

void Mixer::reset_counters() {
  std::fill(mixes_.begin(), mixes_.end(), 0);
  input_mixes_ = batches_ = repeated_calls_ = 0;
}

}  // namespace manifold_mixup
