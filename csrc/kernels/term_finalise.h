// XTTSLoss's finalisation on one replica, as framework-free pure functions of
// scalars: every term's value from its statistics (num, den, nonfinite), the
// weighted sum of the terms other than mel, the finiteness flags and the mel
// op's state for this call (finalise_terms); the total and raw total once the
// decision has set the mel weight (combine_total); and the total's gradient
// with respect to every term's num (combine_total_grad). The TF ops
// MyxttsOps>FinaliseTerms, MyxttsOps>CombineTotal and MyxttsOps>CombineTotalGrad
// (csrc/tf/finalise_op.cc) run them in plain graphs on the CPU, where the same
// steps in TF ops are some sixty scalar ops per step.
//
// myxtts_loss.finalise holds the definition in TF ops (what XLA compiles, and
// what runs wherever the ops do not: several replicas, a GPU, ...) and every
// weight and bound: they arrive here as op attributes. Every step is the operation of that
// definition, in its order and precision (the reduction in float64, the rest in float32; NaN and
// ties through min and max as TF's do: tf_scalar.h), compiled with -ffp-contract=off, so both give
// the same bits; tests/test_finalise_op.py compares them.
#pragma once

#include <cmath>
#include <cstdint>

#include "mel_loss_math.h"  // state:: layout
#include "tf_scalar.h"

namespace myxtts_ops {
namespace finalise {

// One term's setting: its weight (unused for the mel term, whose weight is the
// decision's) and the bounds of its batch value, if it clips.
struct TermSetting {
  float weight = 1.0f;
  bool clipped = false;
  double lo = 0.0;
  double hi = 0.0;
};

// One term's finalised value.
struct TermValue {
  float value = 0.0f;  // num / den of the whole batch (0 when den is 0), clipped
  float out = 0.0f;    // the value the total adds: value, or NaN where the share is not finite
  bool inside = true;  // within the clip bounds (the share's gradient passes)
  bool kept = true;    // its weighted value is finite (always true for mel)
};

struct Finalised {
  float mel = 0.0f;        // the mel term's value
  float other = 0.0f;      // sum of the other terms' finite weighted values
  float other_out = 0.0f;  // the same sum of their outs (what the total adds)
  bool finite = true;      // no non-finite value counted and every weighted value finite
  bool has_valid = false;  // the mel term had a valid finite element
  bool all_bad = false;    // it had valid elements and none finite
};

// The value of term i from its statistics, as the TF-ops definition computes
// it (value in float64 then float32; the share num / den in float32).
inline TermValue term_value(float num, float den, const TermSetting& s) {
  TermValue t;
  double v = div_no_nan(static_cast<double>(num), static_cast<double>(den));
  float share = div_no_nan(num, den);
  if (s.clipped) {
    t.inside = v >= s.lo && v <= s.hi;
    v = tf_clip(v, s.lo, s.hi);
    share = t.inside ? share : 0.0f;
  }
  t.value = static_cast<float>(v);
  t.out = t.value + (share - share);
  return t;
}

// Finalise n terms (mel at mel_index). terms[i] receives term i's value;
// new_state (state::kSize doubles) the mel op's state for this call: the op's
// own update (mel_state) when the mel value is finite, else old_state with one
// more step and one more non-finite step.
inline Finalised finalise_terms(int n, const float* num, const float* den, const float* nonfinite,
                                const TermSetting* settings, int mel_index, int64_t mel_valid,
                                const double* mel_state, const double* old_state, TermValue* terms,
                                double* new_state) {
  Finalised f;
  double nonfinite_total = 0.0;
  for (int i = 0; i < n; ++i) {
    terms[i] = term_value(num[i], den[i], settings[i]);
    nonfinite_total = nonfinite_total + static_cast<double>(nonfinite[i]);
  }
  f.mel = terms[mel_index].value;
  const int64_t bad = double_to_int64(static_cast<double>(nonfinite[mel_index]));
  const int64_t valid = double_to_int64(static_cast<double>(mel_valid));
  const bool mel_finite = std::isfinite(f.mel);
  for (int k = 0; k < state::kSize; ++k) {
    const bool bumped = k == state::kSteps || k == state::kNonfiniteSteps;
    new_state[k] = mel_finite ? mel_state[k] : old_state[k] + (bumped ? 1.0 : 0.0);
  }
  f.has_valid = wrap_sub(valid, bad) > 0;
  f.all_bad = valid > 0 && !f.has_valid;
  f.finite = nonfinite_total == 0.0 && mel_finite;
  for (int i = 0; i < n; ++i) {
    if (i == mel_index) continue;
    const float contribution = settings[i].weight * terms[i].value;
    terms[i].kept = std::isfinite(contribution);
    f.other = f.other + (terms[i].kept ? contribution : 0.0f);
    f.other_out = f.other_out + (terms[i].kept ? settings[i].weight * terms[i].out : 0.0f);
    f.finite = f.finite && terms[i].kept;
  }
  return f;
}

struct Total {
  float total = 0.0f;  // what is differentiated: 0 when not finite
  float raw = 0.0f;    // the raw total reported and smoothed: 0 when not finite
};

// The total before its finiteness gate, with the decision's mel weight;
// mel_kept: the mel term's weighted value is finite.
inline float ungated_total(float weight, float mel, float mel_out, float other_out,
                           bool* mel_kept) {
  *mel_kept = std::isfinite(weight * mel);
  return (*mel_kept ? weight * mel_out : 0.0f) + other_out;
}

// The total and the raw total. mel_out: the mel term's out.
inline Total combine_total(float weight, float mel, float other, float mel_out, float other_out) {
  Total t;
  bool kept;
  const float total = ungated_total(weight, mel, mel_out, other_out, &kept);
  const float raw = (kept ? weight * mel : 0.0f) + other;
  t.total = std::isfinite(total) ? total : 0.0f;
  t.raw = std::isfinite(raw) ? raw : 0.0f;
  return t;
}

// d total / d num[i] for the upstream gradient grad: the gradient of the
// TF-ops definition, step by step (the gate on the total before it is zeroed,
// the term's kept gate, its weight, its clip, num / den).
inline void combine_total_grad(int n, float grad, float weight, float mel, float mel_out,
                               float other_out, const float* den, const bool* kept,
                               const bool* inside, const TermSetting* settings, int mel_index,
                               float* grad_num) {
  bool mel_kept;
  const float total = ungated_total(weight, mel, mel_out, other_out, &mel_kept);
  const float g = std::isfinite(total) ? grad : 0.0f;
  for (int i = 0; i < n; ++i) {
    const bool is_mel = i == mel_index;
    const float factor = is_mel ? weight : settings[i].weight;
    const float g_out = ((is_mel ? mel_kept : kept[i]) ? g : 0.0f) * factor;
    const float g_share = inside[i] ? g_out : 0.0f;
    grad_num[i] = div_no_nan(g_share, den[i]);
  }
}

}  // namespace finalise
}  // namespace myxtts_ops
