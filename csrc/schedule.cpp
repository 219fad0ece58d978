#include "schedule.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace manifold_mixup {

void Schedule::validate() const {
  const int k = static_cast<int>(kind);
  TORCH_CHECK(k >= 0 && k <= 4, "schedule.kind must be one of none, linear, cosine, exponential, ",
              "polynomial (0 to 4), got ", k);
  if (kind == ScheduleKind::None) return;
  TORCH_CHECK(std::isfinite(alpha_min) && alpha_min >= 0, "schedule.alpha_min must be a finite ",
              "number >= 0, got ", alpha_min);
  TORCH_CHECK(std::isfinite(alpha_max) && alpha_max >= 0, "schedule.alpha_max must be a finite ",
              "number >= 0, got ", alpha_max);
  TORCH_CHECK(total_steps > 0, "schedule.total_steps must be > 0 when a schedule is set, got ",
              total_steps);
  TORCH_CHECK(kind != ScheduleKind::Polynomial || (std::isfinite(power) && power > 0),
              "schedule.power must be > 0 for a polynomial schedule, got ", power);
}

double Schedule::alpha_at(double p) const {
  p = std::clamp(p, 0.0, 1.0);
  const double span = alpha_max - alpha_min;
  switch (kind) {
    case ScheduleKind::None: return alpha_min;
    case ScheduleKind::Linear: return alpha_min + p * span;
    case ScheduleKind::Cosine: return alpha_min + (1 + std::cos(M_PI * (1 - p))) * span / 2;
    case ScheduleKind::Exponential:
      return alpha_min == 0 ? 0.0 : alpha_min * std::pow(alpha_max / alpha_min, p);
    case ScheduleKind::Polynomial: return alpha_min + span * std::pow(p, power);
  }
  return alpha_min;
}

double Schedule::alpha_at_step(int64_t step) const {
  return alpha_at(total_steps > 0 ? static_cast<double>(step) / total_steps : 1.0);
}

}  // namespace manifold_mixup
