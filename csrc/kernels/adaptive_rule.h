// The adaptive mel weight decision (SPEC 4.1) and the reported smoothed total
// (MyXTTS contract, section 4) as framework-free pure functions of scalars:
// (state, this call's observations, settings) -> new state. The TF op
// MyxttsOps>AdaptiveWeightStep / MyxttsOps>SmoothingStep (csrc/tf/rule_op.cc)
// runs them as one op each in plain graphs, where the same rule in TF ops is
// some ninety scalar ops between the mel op's forward and its backward.
//
// myxtts_loss.rule holds the rule's definition in TF ops (what XLA compiles)
// and every setting and constant: they arrive here as op attributes, so this
// header states none of them. Every step is the operation of that definition,
// in its order and precision (float32; float64 for the history's sum and the
// divisions by a constant), compiled with -ffp-contract=off (no fused
// multiply-add), so both give the same bits; tests/test_rule_op.py compares
// them.
#pragma once

#include <cmath>
#include <cstdint>

#include "mel_loss_math.h"  // MXO_HD
#include "tf_scalar.h"

namespace myxtts_ops {
namespace rule {

struct Settings {
  float spike_factor_nonnegative = 0.0f;  // theta: the spike limit is theta * rt for rt >= 0
  float spike_factor_negative = 0.0f;     // 2 - theta, below 0
  int64_t spike_min_steps = 0;            // spikes are looked for once step > this
  int64_t min_warmup_steps = 0;
  int64_t cooling_period = 0;
  int64_t min_stable_steps = 0;
  float variance_threshold = 0.0f;
  float ratio_eps = 0.0f;  // ratio = clip(L / max(|mean|, eps), ratio_min, ratio_max)
  float ratio_min = 0.0f;
  float ratio_max = 0.0f;
  float loss_high_ratio = 0.0f;
  float loss_low_ratio = 0.0f;
  float min_weight = 0.0f;
  float max_weight = 0.0f;
  float max_change_percent = 0.0f;
  float max_weighted_loss = 0.0f;
  float reference_rate = 0.0f;  // a: the spike reference's EMA rate
  float reference_keep = 0.0f;  // 1 - a
};

struct State {
  int64_t step_count = 0;
  float current_mel_weight = 0.0f;
  float previous_mel_weight = 0.0f;
  int64_t last_weight_change_step = 0;
  int64_t consecutive_stable_steps = 0;
  float running_total_loss = 0.0f;
  bool running_total_initialized = false;
  int64_t nonfinite_steps = 0;
  int64_t spike_count = 0;
  int64_t weight_changes = 0;
  int64_t rejected_changes = 0;
};

struct Observations {
  float mel = 0.0f;    // the batch's mel loss (may be non-finite)
  float other = 0.0f;  // the weighted sum of the other terms
  bool finite = true;  // no term saw a non-finite value
  bool has_valid = false;
  float running_mean = 0.0f;  // the op's statistics after this call
  float window_variance = 0.0f;
  bool growing = false;  // gradients are growing
  bool enabled = true;   // the manual on/off switch
};

struct Events {
  bool clean = false;
  bool spike = false;
  bool accepted = false;
  bool rejected = false;
};

// The float32 nearest to a / b, both widened to double: what the TF form's
// float64 division of a constant rounded to float32 gives.
MXO_HD float div_rounded(double a, double b) { return static_cast<float>(a / b); }

// One call of SPEC 4.1; returns the weight for this call's total.
MXO_HD float adaptive_weight_step(const State& state, const Observations& obs, const Settings& c,
                                  State* out, Events* events) {
  const float mel = obs.mel;
  const float other = obs.other;
  const int64_t s = wrap_add(state.step_count, 1);
  const float w = state.current_mel_weight;
  const float rt = state.running_total_loss;
  const bool rt_init = state.running_total_initialized;

  // 1. Clean / spike.
  const float weighted_pre = w * mel;
  const float total_pre = weighted_pre + other;
  const bool finite = obs.finite && std::isfinite(total_pre);
  const bool clean = finite && obs.has_valid;
  const float spike_limit =
      (rt >= 0.0f ? c.spike_factor_nonnegative : c.spike_factor_negative) * rt;
  const bool check_spike = s > c.spike_min_steps && rt_init;
  const bool spike = clean && check_spike && total_pre > spike_limit;

  // 2. Gate.
  const bool passed = clean && !spike && obs.enabled && s >= c.min_warmup_steps &&
                      wrap_sub(s, state.last_weight_change_step) >= c.cooling_period &&
                      obs.window_variance < c.variance_threshold;
  const int64_t consec = passed ? wrap_add(state.consecutive_stable_steps, 1) : 0;
  const bool decide = passed && consec >= c.min_stable_steps;

  // 3.-4. Direction, candidate and its validation.
  const float safe_mel = std::isfinite(mel) ? mel : 0.0f;
  float new_w = w;
  bool accepted = false, rejected = false;
  if (decide) {
    const float ratio = tf_clip(safe_mel / tf_max(std::fabs(obs.running_mean), c.ratio_eps),
                                c.ratio_min, c.ratio_max);
    const bool up = ratio > c.loss_high_ratio && !obs.growing;
    const bool down = ratio < c.loss_low_ratio || obs.growing;
    const float direction = down ? -1.0f : (up ? 1.0f : 0.0f);
    const bool attempt = direction != 0.0f;
    const float change = c.max_change_percent * direction;
    const float factor = 1.0f + change;
    const float cand = tf_clip(w * factor, c.min_weight, c.max_weight);
    const float weighted = cand * safe_mel;
    const bool valid = cand != w && std::isfinite(cand) && cand >= c.min_weight &&
                       cand <= c.max_weight && std::isfinite(weighted) &&
                       weighted <= c.max_weighted_loss;
    accepted = attempt && valid;
    rejected = attempt && !valid;
    new_w = accepted ? cand : w;
  }

  // 5. Spike reference.
  const float weighted_new = new_w * mel;
  const float total = weighted_new + other;
  const float clipped = (check_spike && rt > 0.0f) ? tf_min(total, spike_limit) : total;
  float new_rt = rt;
  if (clean) {
    if (rt_init) {
      const float kept = c.reference_keep * rt;
      const float added = c.reference_rate * clipped;
      new_rt = kept + added;
    } else {
      new_rt = total;
    }
  }

  out->step_count = s;
  out->current_mel_weight = new_w;
  out->previous_mel_weight = accepted ? w : state.previous_mel_weight;
  out->last_weight_change_step = accepted ? s : state.last_weight_change_step;
  out->consecutive_stable_steps = accepted ? 0 : consec;
  out->running_total_loss = new_rt;
  out->running_total_initialized = rt_init || clean;
  out->nonfinite_steps = wrap_add(state.nonfinite_steps, finite ? 0 : 1);
  out->spike_count = wrap_add(state.spike_count, spike ? 1 : 0);
  out->weight_changes = wrap_add(state.weight_changes, accepted ? 1 : 0);
  out->rejected_changes = wrap_add(state.rejected_changes, rejected ? 1 : 0);
  events->clean = clean;
  events->spike = spike;
  events->accepted = accepted;
  events->rejected = rejected;
  return new_w;
}

struct SmoothingSettings {
  float alpha = 0.0f;        // loss_smoothing_factor (not 0: the caller skips the step)
  float keep = 0.0f;         // 1 - alpha
  float theta = 0.0f;        // max_loss_spike_threshold
  float decay_steps = 0.0f;  // d = min(step / decay_steps, decay_max)
  float decay_max = 0.0f;
  float eps = 0.0f;        // rho = c / (mean + eps)
  int64_t damp_after = 0;  // damping once step > this
};

// One call of the smoothing: `history` (`window` slots) and `running` are
// updated in place; returns the smoothed total.
MXO_HD float smoothing_step(float raw_total, int64_t step, const SmoothingSettings& c,
                            float* history, int64_t window, float* running) {
  const float value = std::isfinite(raw_total) ? raw_total : 0.0f;
  int64_t slot = wrap_sub(step, 1) % window;
  if (slot < 0) slot += window;  // floormod
  for (int64_t i = 0; i < window; ++i) {
    const float h = std::isfinite(history[i]) ? history[i] : 0.0f;
    history[i] = i == slot ? value : h;
  }
  const float rt = std::isfinite(*running) ? *running : 0.0f;
  const float d = tf_min(div_rounded(static_cast<double>(step), c.decay_steps), c.decay_max);
  const float old_part = d * rt;
  const float one_minus_d = 1.0f - d;
  const float new_part = one_minus_d * value;
  float new_rt = old_part + new_part;
  if (!std::isfinite(new_rt)) new_rt = value;
  *running = new_rt;

  double sum = 0.0;  // in float64, as the TF form (exact for totals of like size)
  for (int64_t i = 0; i < window; ++i) sum += static_cast<double>(history[i]);
  const float avg = div_rounded(sum, static_cast<double>(window));
  float rho = value / (avg + c.eps);
  if (!std::isfinite(rho)) rho = 1.0f;
  const float damped = value * tf_min(c.theta / rho, 1.0f);
  const float blended_value = c.keep * value;
  const float blended_running = c.alpha * new_rt;
  const float blended = blended_value + blended_running;
  float out = step > c.damp_after ? (rho > c.theta ? damped : blended) : value;
  if (!std::isfinite(out)) out = value;
  return out;
}

}  // namespace rule
}  // namespace myxtts_ops
