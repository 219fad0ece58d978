#include "mixer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/DistributionsHelper.h>
#include <ATen/native/Distributions.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/nll_loss_nd.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <mutex>
#include <utility>

#include "errors.h"
#include "ops/mix.h"

namespace manifold_mixup {

namespace {
void check_alpha(double alpha, const char* name) {
  MM_CHECK_ARG(std::isfinite(alpha) && alpha >= 0, name, " must be a finite number >= 0 ",
              "(0 means no mixing), got ", alpha);
}
}  // namespace

Mixer::Mixer(MixerOptions options) : options_(std::move(options)), alpha_(options_.alpha) {
  check_alpha(alpha_, "alpha");
  if (options_.schedule) options_.schedule->validate();
  if (options_.seed) own_generator_ = at::make_generator<at::CPUGeneratorImpl>(*options_.seed);
  if (options_.schedule) set_step(0);
}

void Mixer::set_alpha(double alpha) {
  check_alpha(alpha, "alpha");
  alpha_ = alpha;
}

void Mixer::set_step(int64_t step) {
  MM_CHECK_ARG(step >= 0, "step must be >= 0, got ", step);
  if (options_.schedule) alpha_ = options_.schedule->alpha_at_step(step);
}

int64_t Mixer::add_point(const std::string& name) {
  MM_CHECK_STATE(!in_batch_, "add_point: cannot add a mixup point during a batch (call end_batch first)");
  names_.push_back(name);
  mixes_.push_back(0);
  fired_.push_back(false);
  return num_points() - 1;
}

void Mixer::clear_points() {
  MM_CHECK_STATE(!in_batch_, "clear_points: cannot remove mixup points during a batch (call end_batch first)");
  names_.clear();
  mixes_.clear();
  fired_.clear();
}

void Mixer::retain_points(const std::vector<int64_t>& indices) {
  MM_CHECK_STATE(!in_batch_, "retain_points: cannot remove mixup points during a batch (call end_batch first)");
  std::vector<std::string> names;
  std::vector<int64_t> mixes;
  int64_t previous = -1;
  for (int64_t i : indices) {
    MM_CHECK_ARG(i > previous && i < num_points(), "retain_points: indices must be strictly ",
                "increasing point indices in [0, ", num_points(), "), got ", c10::IntArrayRef(indices));
    previous = i;
    names.push_back(names_[i]);
    mixes.push_back(mixes_[i]);
  }
  names_ = std::move(names);
  mixes_ = std::move(mixes);
  fired_.assign(names_.size(), false);
}

at::Generator Mixer::cpu_generator() const {
  return own_generator_ ? *own_generator_ : at::detail::getDefaultCPUGenerator();
}

namespace {
// One draw of Beta(alpha, alpha) folded to max(l, 1 - l), alpha > 0. Beta(a, a) is
// G1 / (G1 + G2) with G ~ Gamma(a), and Gamma(a) is Gamma(a + 1) * U^(1/a); so l = sigmoid(d),
// d = log(g1 / g2) + log(u1 / u2) / a, finite for tiny a, where Gamma(a) itself underflows to 0
// (torch's Dirichlet sampler then returns 0.5, the strongest mixing). The log-uniforms are
// subtracted before dividing by a: for a subnormal a each quotient alone overflows to -inf,
// and -inf - -inf is NaN. Folded, max(l, 1 - l) = sigmoid(|d|).
double folded_beta(double alpha, at::CPUGeneratorImpl* gen) {
  auto uniform = [gen] { return at::uniform_real_distribution<double>(0.0, 1.0)(gen); };
  auto normal = [gen] { return at::normal_distribution<double>(0.0, 1.0)(gen); };
  BaseSampler<double, decltype(uniform)> u(uniform);
  BaseSampler<double, decltype(normal)> n(normal);
  const double log_g = std::log(sample_gamma<double, double>(alpha + 1, u, n)) -
                       std::log(sample_gamma<double, double>(alpha + 1, u, n));
  const double log_u = std::log1p(-uniform()) - std::log1p(-uniform());  // U in (0, 1]
  return 1 / (1 + std::exp(-std::abs(log_g + log_u / alpha)));
}
}  // namespace

// A handful of tensor ops per batch cost more than the draws: everything is drawn in one loop
// on the CPU generator into one host buffer (perm as int64, the chosen point as int64, then lam
// as float32), moved to the batch's device by one copy, pinned for CUDA so that the copy does
// not wait for the host. The order of the draws (weights, permutation, point) is fixed: the
// same seed gives the same batches.
void Mixer::draw_batch(int64_t batch_size, at::Device device) {
  const int64_t b = batch_size, perm_bytes = b * 8, chosen_bytes = 8;
  auto host = at::empty({perm_bytes + chosen_bytes + b * 4},
                        at::TensorOptions().dtype(at::kByte).pinned_memory(device.is_cuda()));
  uint8_t* bytes = host.mutable_data_ptr<uint8_t>();
  auto* perm = reinterpret_cast<int64_t*>(bytes);
  auto* chosen = reinterpret_cast<int64_t*>(bytes + perm_bytes);
  auto* lam = reinterpret_cast<float*>(bytes + perm_bytes + chosen_bytes);
  const int64_t candidates = num_points() + (options_.input_mixup ? 1 : 0);
  {
    const at::Generator g = cpu_generator();
    auto* gen = g.get<at::CPUGeneratorImpl>();
    std::lock_guard<std::mutex> lock(gen->mutex_);
    for (int64_t i = 0; i < b; ++i) lam[i] = alpha_ == 0 ? 1.f : float(folded_beta(alpha_, gen));
    // Fisher-Yates, as at::randperm on the CPU.
    for (int64_t i = 0; i < b; ++i) perm[i] = i;
    for (int64_t i = 0; i + 1 < b; ++i) {
      std::swap(perm[i], perm[i + at::uniform_int_from_to_distribution<int64_t>(b - i, 0)(gen)]);
    }
    *chosen = kNoPoint;
    if (alpha_ > 0 && candidates > 0) {
      const int64_t pick = at::uniform_int_from_to_distribution<int64_t>(candidates, 0)(gen);
      *chosen = pick < num_points() ? pick : kInputPoint;
    }
  }
  chosen_ = *chosen;
  // Streams: the copy is enqueued on the stream current here (begin_batch's), so lam, perm and
  // the chosen point are ready in that stream's order, and only there. Every later use on that
  // stream (the points' mix, the mixed loss, their backward) is ordered after it with no host
  // sync. A forward on another stream must first wait for this one (other.wait_stream(this),
  // as for any tensor torch makes on a stream), and if this batch may end while that stream
  // still reads them, record_stream them for it, as torch asks of every tensor used across
  // streams. The pinned buffer needs nothing: copy_ records an event for it on this stream, and
  // the host allocator reuses it only once the copy is done.
  const auto on_device = device.is_cpu() ? host : host.to(device, /*non_blocking=*/true);
  perm_ = on_device.narrow(0, 0, perm_bytes).view(at::kLong);
  chosen_tensor_ = on_device.narrow(0, perm_bytes, chosen_bytes).view(at::kLong).squeeze(0);
  lam_ = on_device.narrow(0, perm_bytes + chosen_bytes, b * 4).view(at::kFloat);
}

int64_t Mixer::begin_batch(int64_t batch_size, at::Device device) {
  MM_CHECK_STATE(!in_batch_, "begin_batch: the previous batch has not ended (call end_batch first)");
  MM_CHECK_ARG(batch_size >= 1, "begin_batch: batch_size must be >= 1, got ", batch_size);
  draw_batch(batch_size, device);
  std::fill(fired_.begin(), fired_.end(), false);
  input_mixed_ = point_mixed_ = point_counted_ = false;
  batch_size_ = batch_size;
  in_batch_ = true;
  ++batches_;
  return chosen_;
}

void Mixer::check_in_batch(const char* what) const {
  MM_CHECK_STATE(in_batch_, what, ": no batch has begun (call begin_batch first)");
}

void Mixer::check_batch_tensor(const at::Tensor& t, const char* what) const {
  check_in_batch(what);
  MM_CHECK_ARG(t.defined(), what, ": the tensor to mix is undefined");
  MM_CHECK_ARG(t.dim() >= 1 && t.size(0) == batch_size_, what, ": the tensor must have the batch's ",
              batch_size_, " samples along dim 0 (as told to begin_batch), got shape ", t.sizes());
  MM_CHECK_ARG(t.device() == lam_.device(), what, ": the tensor must be on the batch's device (",
              lam_.device(), "), got ", t.device());
}

at::Tensor Mixer::mix(const at::Tensor& t) const {
  check_batch_tensor(t, "mix");
  return manifold_mixup::mix(t, perm_, lam_);
}

at::Tensor Mixer::mix_input(const at::Tensor& x) {
  check_in_batch("mix_input");
  if (chosen_ != kInputPoint) return x;
  auto out = mix(x);
  if (!input_mixed_) ++input_mixes_;
  input_mixed_ = true;
  return out;
}

void Mixer::begin_forward() {
  check_in_batch("begin_forward");
  std::fill(fired_.begin(), fired_.end(), false);
  point_mixed_ = false;
}

void Mixer::count_point_mix(int64_t point) {
  fired_[point] = true;
  point_mixed_ = true;
  if (!point_counted_) ++mixes_[point];
  point_counted_ = true;
}

at::Tensor Mixer::point_output(int64_t point, const at::Tensor& out) {
  MM_CHECK_ARG(point >= 0 && point < num_points(), "point_output: point must be in [0, ",
              num_points(), "), got ", point);
  if (!in_batch_ || point != chosen_) return out;
  if (fired_[point]) {
    ++repeated_calls_;
    return out;
  }
  auto mixed = mix(out);
  count_point_mix(point);
  return mixed;
}

void Mixer::record_point_mixed(int64_t point, int64_t calls) {
  check_in_batch("record_point_mixed");
  MM_CHECK_STATE(point == chosen_ && point >= 0, "record_point_mixed: point ", point,
              " is not the batch's chosen point (", chosen_, ")");
  MM_CHECK_ARG(calls >= 1, "record_point_mixed: calls must be >= 1 (the mixed call), got ", calls);
  MM_CHECK_STATE(!fired_[point], "record_point_mixed: point ", point, " has already mixed in this ",
                 "forward (call begin_forward before the next one)");
  count_point_mix(point);
  repeated_calls_ += calls - 1;
}

at::Tensor Mixer::mixed_loss(const at::Tensor& loss_own, const at::Tensor& loss_other) const {
  check_in_batch("mixed_loss");
  MM_CHECK_ARG(loss_own.defined() && loss_own.dim() >= 1 && loss_own.size(0) == batch_size_,
              "mixed_loss: loss_own must be an unreduced loss of shape [", batch_size_, ", ...]");
  MM_CHECK_ARG(loss_other.defined() && loss_other.sizes() == loss_own.sizes(),
              "mixed_loss: loss_other must have loss_own's shape ", loss_own.sizes());
  if (!mixed()) return loss_own;
  std::vector<int64_t> shape(loss_own.dim(), 1);
  shape[0] = batch_size_;
  const auto lam = lam_.to(loss_own.scalar_type()).view(shape);
  return lam * loss_own + (1 - lam) * loss_other;
}

void Mixer::check_class_loss(const at::Tensor& input, const at::Tensor& target,
                             const ClassLossOptions& options, const char* what) const {
  check_in_batch(what);
  MM_CHECK_ARG(input.defined() && input.dim() >= 2 && input.size(0) == batch_size_, what,
               ": the input must have shape [", batch_size_, ", C, ...] (the batch's samples, then ",
               "the classes), got ", input.defined() ? c10::str(input.sizes()) : std::string("undefined"));
  MM_CHECK_ARG(at::isFloatingType(input.scalar_type()), what, ": the input must be floating, got ",
               input.scalar_type());
  auto target_shape = input.sizes().vec();
  target_shape.erase(target_shape.begin() + 1);
  MM_CHECK_ARG(target.defined() && target.scalar_type() == at::kLong &&
                   target.sizes() == c10::IntArrayRef(target_shape),
               what, ": target must be int64 class indices of shape ", c10::IntArrayRef(target_shape),
               " (the input's shape without its class dim 1), got ",
               target.defined() ? c10::str(target.scalar_type(), " of shape ", target.sizes())
                                : std::string("undefined"));
  MM_CHECK_ARG(target.device() == input.device(), what, ": target must be on the input's device (",
               input.device(), "), got ", target.device());
  const auto& w = options.weight;
  MM_CHECK_ARG(!w.defined() || (w.dim() == 1 && w.size(0) == input.size(1) &&
                                at::isFloatingType(w.scalar_type()) && w.device() == input.device()),
               what, ": weight must be a floating tensor of the ", input.size(1), " classes on ",
               input.device(), ", got ",
               w.defined() ? c10::str(w.scalar_type(), " of shape ", w.sizes(), " on ", w.device())
                           : std::string());
  MM_CHECK_ARG(options.label_smoothing >= 0 && options.label_smoothing <= 1, what,
               ": label_smoothing must be in [0, 1], got ", options.label_smoothing);
  MM_CHECK_ARG(options.reduction == at::Reduction::None || options.reduction == at::Reduction::Mean ||
                   options.reduction == at::Reduction::Sum,
               what, ": reduction must be None, Mean or Sum, got ", int64_t(options.reduction));
}

namespace {
// Float32 for float16/bfloat16, as autocast computes torch's losses; other dtypes unchanged.
at::Tensor loss_precision(const at::Tensor& t) {
  const bool reduced = t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
  return reduced ? t.to(at::kFloat) : t;
}

// The class weight of each target (1 without weights), 0 where it is ignored.
at::Tensor target_weights(const at::Tensor& target, const at::Tensor& weight, int64_t ignore_index,
                          at::ScalarType dtype) {
  if (!weight.defined()) return (target != ignore_index).to(dtype);
  const auto ignored = target == ignore_index;
  return weight.index_select(0, target.masked_fill(ignored, 0).flatten())
      .view(target.sizes())
      .masked_fill(ignored, 0);
}
}  // namespace

at::Tensor Mixer::mix_class_loss(const at::Tensor& log_probs, const at::Tensor& target,
                                 const ClassLossOptions& options) const {
  const auto dtype = log_probs.scalar_type();
  const auto weight = options.weight.defined() ? options.weight.to(dtype) : at::Tensor();
  const int64_t ignore = options.ignore_index;
  const auto other_target = target.index_select(0, perm_);
  std::vector<int64_t> shape(target.dim(), 1);
  shape[0] = batch_size_;
  const auto lam = lam_.to(dtype).view(shape);  // over the elements of each sample
  const auto none = at::Reduction::None;
  auto loss = lam * at::nll_loss_nd(log_probs, target, weight, none, ignore) +
              (1 - lam) * at::nll_loss_nd(log_probs, other_target, weight, none, ignore);
  if (options.label_smoothing > 0) {
    // torch's smoothing term, -sum_c w[c] log p_c, counts where the target is kept: lam of it
    // for the own target, 1 - lam for the other one.
    std::vector<int64_t> class_shape(log_probs.dim(), 1);
    class_shape[1] = log_probs.size(1);
    const auto smooth = weight.defined() ? -(log_probs * weight.view(class_shape)).sum(1)
                                         : -log_probs.sum(1);
    const auto kept = lam * (target != ignore) + (1 - lam) * (other_target != ignore);
    const double eps = options.label_smoothing;
    loss = (1 - eps) * loss + (eps / double(log_probs.size(1))) * smooth * kept;
  }
  if (options.reduction == at::Reduction::None) return loss;
  if (options.reduction == at::Reduction::Sum) return loss.sum();
  const auto kept_weight = lam * target_weights(target, weight, ignore, dtype) +
                           (1 - lam) * target_weights(other_target, weight, ignore, dtype);
  return loss.sum() / kept_weight.sum();
}

at::Tensor Mixer::mixed_cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                      const ClassLossOptions& options) const {
  check_class_loss(logits, target, options, "mixed_cross_entropy");
  const auto input = loss_precision(logits);
  const auto weight = options.weight.defined() ? options.weight.to(input.scalar_type()) : at::Tensor();
  if (!mixed()) {
    return at::cross_entropy_loss(input, target, weight, options.reduction, options.ignore_index,
                                  options.label_smoothing);
  }
  // One log-softmax shared by both targets: its backward runs once, on the summed gradient.
  return mix_class_loss(at::log_softmax(input, 1), target, options);
}

at::Tensor Mixer::mixed_nll_loss(const at::Tensor& log_probs, const at::Tensor& target,
                                 const ClassLossOptions& options) const {
  check_class_loss(log_probs, target, options, "mixed_nll_loss");
  MM_CHECK_ARG(options.label_smoothing == 0, "mixed_nll_loss: label_smoothing must be 0 (it is ",
               "cross-entropy's), got ", options.label_smoothing);
  const auto input = loss_precision(log_probs);
  if (!mixed()) {
    const auto weight = options.weight.defined() ? options.weight.to(input.scalar_type()) : at::Tensor();
    return at::nll_loss_nd(input, target, weight, options.reduction, options.ignore_index);
  }
  return mix_class_loss(input, target, options);
}

at::Tensor Mixer::mix_targets(const at::Tensor& y) const {
  check_batch_tensor(y, "mix_targets");
  // Checked whether or not this batch mixed, so that misuse does not depend on the draw.
  MM_CHECK_ARG(at::isFloatingType(y.scalar_type()), "mix_targets: the targets must be a floating ",
              "tensor (regression), got ", y.scalar_type(), "; integer targets are class indices: ",
              "mix the loss instead (mixed_cross_entropy or mixed_loss)");
  return mixed() ? manifold_mixup::mix(y, perm_, lam_) : y;
}

void Mixer::end_batch() {
  if (in_batch_ && chosen_ != kNoPoint && !mixed()) ++unmixed_batches_;
  in_batch_ = false;
  input_mixed_ = point_mixed_ = point_counted_ = false;
  chosen_ = kNoPoint;
}

void Mixer::reset_counters() {
  std::fill(mixes_.begin(), mixes_.end(), 0);
  input_mixes_ = batches_ = repeated_calls_ = unmixed_batches_ = 0;
}

}  // namespace manifold_mixup
