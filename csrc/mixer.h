// Mixer: the per-batch state of manifold mixup, shared by the fastai callbacks (through
// pybind11), C++ hosts and the C ABI.
//
// One training batch:
//   begin_batch(B, device)   lam[B] ~ Beta(alpha, alpha) folded to max(lam, 1 - lam),
//                            perm = a random permutation of B, and the point that mixes
//   mix_input(x)             mixes x if the input was chosen (once per batch)
//   begin_forward()          a forward pass of the model starts (several may run in one batch:
//                            SAM, R-Drop, consistency losses); each mixes at the chosen point
//   point_output(i, out)     called from mixup point i: mixes `out` the first time the chosen
//                            point runs in this forward (or record_point_mixed, from a point
//                            that mixes with lam() and perm() itself)
//   mixed_loss / mixed_cross_entropy / mix_targets, after the forward
//   end_batch()              disarms
// mixed() is the one answer to "did this batch mix?" for the latest forward: only the chosen
// point's actual mixing sets it (or the input's, which holds for the whole batch), so a forward
// whose chosen point never ran (a container, a module outside the model or in eval mode, a
// non-tensor output, a layer skipped by random depth) trains on the plain loss and plain
// targets, and a batch that ends so is counted.
// Everything is drawn on the CPU generator (the Mixer's own when seeded, else torch's default,
// so torch.manual_seed governs it); lam and perm are then moved to the batch's device.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Reduction.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "schedule.h"

namespace manifold_mixup {

struct MixerOptions {
  double alpha = 0.4;          // Beta(alpha, alpha); 0 means no mixing
  bool input_mixup = true;     // the input is one of the candidate points
  std::optional<uint64_t> seed;  // unset: torch's default generators (torch.manual_seed)
  std::optional<Schedule> schedule;  // unset: alpha stays as set (set_alpha)
};

// How a mixed classification loss weighs, ignores and reduces, as torch's cross_entropy and
// nll_loss take it. With l(t) the loss of one element against class t as torch computes it
// (class weight and label smoothing applied, 0 when t is ignored) and w(t) the class weight of t
// (1 without weights, 0 when t is ignored), element e of sample i has the mixed loss
//   lam[i] * l(y[i, e]) + (1 - lam[i]) * l(y[perm[i], e])
// and Mean divides their sum by the sum of lam[i] * w(y[i, e]) + (1 - lam[i]) * w(y[perm[i], e]):
// torch's normaliser (the kept targets' weights) mixed like the targets, so that the result is
// the user's own loss when every lam is 1.
struct ClassLossOptions {
  at::Tensor weight;              // [C] class weights; undefined: every class weighs 1
  int64_t ignore_index = -100;    // targets equal to it count for nothing (torch's default)
  double label_smoothing = 0.0;   // in [0, 1], as torch's cross_entropy; cross-entropy only
  at::Reduction::Reduction reduction = at::Reduction::None;  // None: per element, [B, d...]
};

class Mixer {
 public:
  static constexpr int64_t kNoPoint = -2;     // nothing mixes this batch
  static constexpr int64_t kInputPoint = -1;  // the input mixes this batch

  explicit Mixer(MixerOptions options = {});

  // Alpha of the Beta law; must be finite and >= 0 (0: no mixing). Checks throw ArgumentError,
  // calls out of order StateError (errors.h).
  double alpha() const { return alpha_; }
  void set_alpha(double alpha);
  bool input_mixup() const { return options_.input_mixup; }
  void set_input_mixup(bool on) { options_.input_mixup = on; }
  const std::optional<uint64_t>& seed() const { return options_.seed; }
  // Sets alpha from the schedule after `step` batches (no-op without a schedule). Alpha moves
  // only here: begin_batch does not advance the schedule.
  void set_step(int64_t step);

  // Mixup points (modules). Returns the new point's index. Names are for counters and errors.
  int64_t add_point(const std::string& name);
  void clear_points();
  // Keeps only the points at `indices` (strictly increasing), renumbered 0.. in that order,
  // with their counters: how a host drops candidates it found never run.
  void retain_points(const std::vector<int64_t>& indices);
  int64_t num_points() const { return static_cast<int64_t>(names_.size()); }
  const std::vector<std::string>& point_names() const { return names_; }

  // Starts a batch of `batch_size` samples whose tensors live on `device`. Returns the chosen
  // point: an index from add_point, kInputPoint or kNoPoint (alpha 0, or nothing to choose).
  int64_t begin_batch(int64_t batch_size, at::Device device);
  // Whether a batch has begun and not ended.
  bool in_batch() const { return in_batch_; }
  int64_t chosen() const { return chosen_; }
  int64_t batch_size() const { return batch_size_; }
  // The batch's weights (float32, [B]) and permutation (int64, [B]), on the batch's device.
  const at::Tensor& lam() const { return lam_; }
  const at::Tensor& perm() const { return perm_; }
  // chosen() as a 0-d int64 tensor on the batch's device (copied with lam and perm): what a
  // compiled graph reads, so that one graph serves every draw.
  const at::Tensor& chosen_tensor() const { return chosen_tensor_; }

  // lam[i] * t[i] + (1 - lam[i]) * t[perm[i]], whatever the chosen point. Differentiable.
  at::Tensor mix(const at::Tensor& t) const;
  // The input when it is the chosen point mixed (and counted), otherwise `x` unchanged.
  at::Tensor mix_input(const at::Tensor& x);
  // A forward pass of the model starts in this batch: the points have not run in it yet. The
  // first forward of a batch needs no call (begin_batch starts it); call it before each
  // further one. Whether the input mixed is unchanged: it is mixed once per batch.
  void begin_forward();
  // What a mixup point returns: `out` mixed if this point is chosen and has not run yet in this
  // forward; otherwise `out` unchanged (a repeated call is counted, see repeated_calls()).
  at::Tensor point_output(int64_t point, const at::Tensor& out);
  // For a point that mixes the chosen point's output itself (mix(out, perm(), lam()) from code a
  // compiler traces, which cannot call back here): the chosen `point` ran `calls` >= 1 times in
  // this forward and its first output was mixed. Call at most once per forward, after it.
  void record_point_mixed(int64_t point, int64_t calls);
  // Whether the latest forward of this batch mixed: the input was mixed by mix_input, or the
  // chosen point's output by point_output / record_point_mixed in this forward. False before the
  // forward, and when the chosen point did not run in it.
  bool mixed() const { return input_mixed_ || point_mixed_; }
  // The losses and targets below read mixed(): a batch that did not mix gets the plain loss
  // (loss_own, CE(logits, y)) and the plain targets, so call them after the forward.
  // Per-sample lam * loss_own + (1 - lam) * loss_other, both unreduced, of shape [B, ...]
  // (lam broadcast over the other dimensions, e.g. per-pixel losses).
  at::Tensor mixed_loss(const at::Tensor& loss_own, const at::Tensor& loss_other) const;
  // Mixed cross-entropy of logits [B, C, d...] (classes on dim 1, as torch's cross_entropy)
  // against int64 class targets [B, d...], per ClassLossOptions, from one log-softmax shared by
  // both targets (computed in float32 for float16/bfloat16 logits, as autocast does for
  // cross-entropy). Returns [B, d...] for reduction None (the default: per sample for [B, C]
  // logits), else a scalar. A batch that did not mix gets torch's cross_entropy.
  at::Tensor mixed_cross_entropy(const at::Tensor& logits, const at::Tensor& target,
                                 const ClassLossOptions& options = {}) const;
  // The same for log-probabilities [B, C, d...], as torch's nll_loss (label_smoothing must be 0).
  at::Tensor mixed_nll_loss(const at::Tensor& log_probs, const at::Tensor& target,
                            const ClassLossOptions& options = {}) const;
  // Regression targets mixed like any tensor (unchanged when the batch did not mix).
  at::Tensor mix_targets(const at::Tensor& y) const;
  // Ends the batch; counts it in unmixed_batches() if a point was chosen but its latest forward
  // did not mix.
  void end_batch();

  // Counters since creation (or reset_counters). A point's mixes count batches, not forwards.
  int64_t batches() const { return batches_; }
  const std::vector<int64_t>& point_mixes() const { return mixes_; }
  int64_t input_mixes() const { return input_mixes_; }
  // Calls of the chosen point after its first one in the same forward (left unmixed).
  int64_t repeated_calls() const { return repeated_calls_; }
  // Batches that chose a point (alpha > 0) but ended without mixing: they trained plainly.
  int64_t unmixed_batches() const { return unmixed_batches_; }
  void reset_counters();

 private:
  void check_in_batch(const char* what) const;
  void check_batch_tensor(const at::Tensor& t, const char* what) const;
  void check_class_loss(const at::Tensor& input, const at::Tensor& target,
                        const ClassLossOptions& options, const char* what) const;
  // The mixed loss of log-probabilities in a batch that mixed (see ClassLossOptions).
  at::Tensor mix_class_loss(const at::Tensor& log_probs, const at::Tensor& target,
                            const ClassLossOptions& options) const;
  at::Generator cpu_generator() const;
  // Draws, from cpu_generator(), lam ~ Beta(alpha, alpha) folded (all 1 for alpha 0), a random
  // permutation ([B] each) and the chosen point, and puts them on `device`.
  void draw_batch(int64_t batch_size, at::Device device);
  // Marks the chosen `point` mixed in this forward (and counts it once per batch).
  void count_point_mix(int64_t point);

  MixerOptions options_;
  double alpha_;
  std::optional<at::Generator> own_generator_;  // set when options.seed is
  std::vector<std::string> names_;
  std::vector<int64_t> mixes_;
  std::vector<bool> fired_;  // per point: ran in the current forward
  int64_t input_mixes_ = 0, batches_ = 0, repeated_calls_ = 0, unmixed_batches_ = 0;

  bool in_batch_ = false;
  bool input_mixed_ = false;  // this batch's input was mixed
  bool point_mixed_ = false;  // the chosen point mixed in the current forward
  bool point_counted_ = false;  // ... in some forward of this batch (counted once in mixes_)
  int64_t chosen_ = kNoPoint;
  int64_t batch_size_ = 0;
  at::Tensor lam_, perm_, chosen_tensor_;
};

}  // namespace manifold_mixup
