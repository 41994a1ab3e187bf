// Per-element math of the stop-token loss, shared by the CPU and CUDA kernels
// (no framework headers). The element loss is the weighted binary cross
// entropy of a stop probability (MyXTTS contract 3.2):
//   y = t (1 - s) + s / 2,  pc = clip(p, lo, 1 - lo)
//   e = -(w y log pc + (1 - y) log(1 - pc))
// with s the label smoothing, w the positive weight and lo the clip bound.
#pragma once

#include <cstdint>

#include "mel_loss_math.h"

namespace myxtts_ops {

struct StopLossConfig {
  float positive_weight = 5.0f;
  float label_smoothing = 0.1f;
  float prob_min = 1e-7f;
};

// True for a finite float, from its bits: a plain integer test, so the CPU
// loops vectorise (std::isfinite does not).
MXO_HD bool stop_finite(float x) { return (float_to_bits(x) & 0x7f800000u) != 0x7f800000u; }

// Natural log of a positive normal float (the clipped probabilities and
// their complements are at least prob_min >= 2^-24, mel_loss_checks.h):
// exponent and mantissa from the bits, then the Cephes minimax polynomial on
// [sqrt(1/2) - 1, sqrt(2) - 1], within 1e-7 relative. Plain arithmetic and
// bit operations, so the CPU loops vectorise (libm's logf is a call per
// element, several times slower here) and CPU and GPU compute the same
// function.
MXO_HD float stop_log(float x) {
  uint32_t bits = float_to_bits(x);
  int e = int(bits >> 23) - 126;
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f000000u);  // in [0.5, 1)
  const bool small = m < 0.70710678118654752f;
  e -= small ? 1 : 0;
  m = (small ? m + m : m) - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = float(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  return m + y + 0.693359375f * fe;
}

// The prediction clipped to [prob_min, 1 - prob_min] (d e / d p is 0 where it moved).
MXO_HD float stop_clip(float p, const StopLossConfig& c) {
  const float hi = 1.0f - c.prob_min;
  const float pc = p < c.prob_min ? c.prob_min : p;
  return pc > hi ? hi : pc;
}

// The smoothed target y and its weights: w y and 1 - y.
MXO_HD void stop_weights(float t, const StopLossConfig& c, float* wy, float* ny) {
  const float y = t * (1.0f - c.label_smoothing) + 0.5f * c.label_smoothing;
  *wy = c.positive_weight * y;
  *ny = 1.0f - y;
}

// e at target t and clipped prediction pc.
MXO_HD float stop_loss_at(float t, float pc, const StopLossConfig& c) {
  float wy, ny;
  stop_weights(t, c, &wy, &ny);
  return -(wy * stop_log(pc) + ny * stop_log(1.0f - pc));
}

// d e / d pc.
MXO_HD float stop_grad_pred(float t, float pc, const StopLossConfig& c) {
  float wy, ny;
  stop_weights(t, c, &wy, &ny);
  return ny / (1.0f - pc) - wy / pc;
}

// d e / d t.
MXO_HD float stop_grad_target(float pc, const StopLossConfig& c) {
  return -(1.0f - c.label_smoothing) * (c.positive_weight * stop_log(pc) - stop_log(1.0f - pc));
}

}  // namespace myxtts_ops
