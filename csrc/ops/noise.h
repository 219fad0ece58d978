// Noisy Feature Mixup's noise (Lim et al., ICLR 2022), as mix's kernels draw it when given
// `noise` and `key` (see ops/mix.h): after the mix, element e of the result becomes
//
//   h <- (1 + mult * U_e) * h + add * N_e,   U_e ~ Uniform(-1, 1), N_e ~ Normal(0, 1)
//
// with (add, mult) = noise[0], noise[1]: the authors' add_noise_level and mult_noise_level, each
// already multiplied by its Beta(2, 5) draw of the batch (the Mixer draws those). A term whose
// level is 0 is not applied at all, so with noise (0, 0) the op is exactly mix.
//
// The draws are counter-based, so every device draws the same numbers and the backward can
// draw them again instead of storing them: the pair of elements 2k, 2k + 1 (e in the result's
// logical, contiguous order) takes Philox4x32-10 keyed by `key` at counter k, whose four words
// give two normals (Box-Muller of the first two) and two uniforms (the last two).
#pragma once

#include <ATen/core/PhiloxRNGEngine.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace manifold_mixup::detail {

// The Box-Muller inputs and the two uniforms of a pair, before any transcendental function.
struct PairWords {
  float u1;          // in (0, 1]: its log is finite
  float angle;       // 2 pi u2, u2 in [0, 1)
  float uniform[2];  // in [-1, 1)
};

C10_HOST_DEVICE inline PairWords pair_words(uint64_t key, uint64_t pair) {
  at::Philox4_32 rng(key, pair, 0);
  const uint32_t w0 = rng(), w1 = rng(), w2 = rng(), w3 = rng();
  constexpr float kUnit = 1.0f / 16777216.0f;  // 2^-24: 24-bit floats, exact
  PairWords p;
  p.u1 = static_cast<float>((w0 >> 8) + 1) * kUnit;
  p.angle = static_cast<float>(w1 >> 8) * kUnit * 6.2831853071795864769f;
  p.uniform[0] = static_cast<float>(w2 >> 8) * (2 * kUnit) - 1.0f;
  p.uniform[1] = static_cast<float>(w3 >> 8) * (2 * kUnit) - 1.0f;
  return p;
}

struct NoisePair {
  float normal[2];
  float uniform[2];  // in [-1, 1)
};

// A pair's noise; the normals only when `normals` (they cost the transcendental functions).
C10_HOST_DEVICE inline NoisePair noise_pair(uint64_t key, uint64_t pair, bool normals = true) {
  const PairWords w = pair_words(key, pair);
  NoisePair p;
  p.uniform[0] = w.uniform[0];
  p.uniform[1] = w.uniform[1];
  p.normal[0] = p.normal[1] = 0.0f;
  if (normals) {
    const float radius = ::sqrtf(-2.0f * ::logf(w.u1));
    p.normal[0] = radius * ::cosf(w.angle);
    p.normal[1] = radius * ::sinf(w.angle);
  }
  return p;
}

// v with the noise of element e applied, levels add and mult (either may be 0: not applied).
template <typename opmath_t>
C10_HOST_DEVICE inline opmath_t apply_noise(opmath_t v, const NoisePair& p, int which, float add,
                                            float mult) {
  if (mult != 0.0f) v = v * (opmath_t(1) + opmath_t(mult * p.uniform[which]));
  if (add != 0.0f) v = v + opmath_t(add * p.normal[which]);
  return v;
}

}  // namespace manifold_mixup::detail
