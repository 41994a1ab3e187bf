// Per-element math and running-statistics update shared by the CPU and CUDA
// kernels. No framework headers: this file is included from plain C++, from
// nvcc-compiled .cu files and from the TensorFlow/pybind11 glue alike.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MXO_HD __host__ __device__ __forceinline__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#define MXO_HD inline
#endif

namespace myxtts_ops {

// ---------------------------------------------------------------------------
// Storage types. Half and bfloat16 travel as raw 16-bit patterns so that the
// kernels need neither Eigen nor cuda_fp16 in their interfaces; TF's
// Eigen::half / Eigen::bfloat16 and ml_dtypes' bfloat16 share the layout.
struct half_t {
  uint16_t bits;
};
struct bfloat16_t {
  uint16_t bits;
};

enum class LossType : int { kL1 = 0, kHuber = 1 };
enum class Normalization : int { kPerSample = 0, kGlobal = 1 };

struct LossConfig {
  LossType loss_type = LossType::kL1;
  Normalization normalization = Normalization::kPerSample;
  double huber_delta = 1.0;
};

// ---------------------------------------------------------------------------
// Running-statistics state: a float64 vector the op reads and returns anew.
// This namespace is the one definition of the layout: the build generates
// myxtts_ops/_lib/_state_layout.py from it (scripts/gen_state_layout.py), which
// myxtts_ops/state.py and the test oracles read; tests/test_state_layout.py
// checks the installed copy against this header and against the kernels.
namespace state {
constexpr int kSteps = 0;
constexpr int kCleanSteps = 1;
constexpr int kNonfiniteSteps = 2;
constexpr int kRunningMean = 3;
constexpr int kWindowCount = 4;
constexpr int kWindowMean = 5;
constexpr int kWindowVariance = 6;
constexpr int kLastLoss = 7;
constexpr int kRingHead = 8;  // next slot of the ring buffer to write
constexpr int kRingStart = 9;
constexpr int kWindowSize = 10;
constexpr int kSize = kRingStart + kWindowSize;  // 19
constexpr double kDecayRamp = 1000.0;
constexpr double kMaxDecay = 0.99;
// Largest counter value kept by sanitize_state: every integer up to 2^53 is
// exact in a double.
constexpr double kMaxCount = 9007199254740992.0;
// Fields 0 .. N-1 are public (myxtts_ops.read_state), under these names.
constexpr const char* kPublicFieldNames[] = {
    "steps",        "clean_steps", "nonfinite_steps", "running_mean",
    "window_count", "window_mean", "window_variance", "last_loss",
};
static_assert(sizeof(kPublicFieldNames) / sizeof(kPublicFieldNames[0]) == kLastLoss + 1,
              "public fields are the prefix steps .. last_loss");
}  // namespace state

// Accumulation type: float32 for 16/32-bit inputs, float64 for float64.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};

// ---------------------------------------------------------------------------
// Conversions between storage and accumulation types.
MXO_HD float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}
MXO_HD uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return u;
}

MXO_HD float to_acc(float x) { return x; }
MXO_HD double to_acc(double x) { return x; }

MXO_HD float to_acc(bfloat16_t x) { return bits_to_float(uint32_t(x.bits) << 16); }

MXO_HD float to_acc(half_t x) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(x.bits));
#else
  // IEEE binary16 -> binary32 without float subnormal arithmetic (TF runs
  // CPU kernels with denormals flushed, which would zero half subnormals).
  const uint32_t h = x.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  float magnitude;
  if (em >= 0x7c00u) {  // Inf / NaN: keep the payload
    magnitude = bits_to_float(0x7f800000u | ((em & 0x3ffu) << 13));
  } else if (em >= 0x0400u) {  // normal: rebias the exponent by 127 - 15
    magnitude = bits_to_float((em << 13) + (112u << 23));
  } else {  // subnormal: m * 2^-24, exact and a normal float
    magnitude = float(em) * 5.9604644775390625e-8f;
  }
  return bits_to_float(float_to_bits(magnitude) | sign);
#endif
}

template <typename T>
MXO_HD T from_acc(float x);
template <typename T>
MXO_HD T from_acc(double x);

template <>
MXO_HD float from_acc<float>(float x) {
  return x;
}
template <>
MXO_HD double from_acc<double>(double x) {
  return x;
}

template <>
MXO_HD bfloat16_t from_acc<bfloat16_t>(float x) {
  bfloat16_t r;
#if defined(__CUDA_ARCH__)
  r.bits = __bfloat16_as_ushort(__float2bfloat16_rn(x));
#else
  const uint32_t u = float_to_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = uint16_t((u >> 16) | 0x0040u);  // quiet NaN
  } else {
    const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // nearest even
    r.bits = uint16_t((u + rounding) >> 16);
  }
#endif
  return r;
}

template <>
MXO_HD half_t from_acc<half_t>(float x) {
  half_t r;
#if defined(__CUDA_ARCH__)
  r.bits = __half_as_ushort(__float2half_rn(x));
#else
  // binary32 -> binary16, round to nearest even, with subnormals, overflow to
  // Inf and NaN kept quiet.
  const uint32_t u = float_to_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  uint32_t h;
  if (a > 0x7f800000u) {
    h = 0x7e00u;
  } else if (a >= 0x477ff000u) {  // rounds to >= 65520: overflow
    h = 0x7c00u;
  } else if (a < 0x38800000u) {  // below the smallest normal half (2^-14)
    // Let the FPU round: adding 0.5 aligns the half subnormal grid (2^-24) to
    // the float's last mantissa bit.
    h = float_to_bits(bits_to_float(a) + 0.5f) - 0x3f000000u;
  } else {
    const uint32_t odd = (a >> 13) & 1u;
    h = (a + 0xc8000fffu + odd) >> 13;  // rebias exponent by -112<<23, round
  }
  r.bits = uint16_t(h | sign);
#endif
  return r;
}

// ---------------------------------------------------------------------------
// Element math. `finite` is a comparison rather than std::isfinite so that
// compilers vectorise it (NaN and Inf both fail `|x| <= max`).
template <typename A>
struct Limits;
template <>
struct Limits<float> {
  static constexpr float kMax = 3.402823466e+38f;
};
template <>
struct Limits<double> {
  static constexpr double kMax = 1.7976931348623157e+308;
};

MXO_HD float abs_val(float x) { return fabsf(x); }
MXO_HD double abs_val(double x) { return fabs(x); }

template <typename A>
MXO_HD bool is_finite(A x) {
  return abs_val(x) <= Limits<A>::kMax;
}

// Loss of one element given d = y_pred - y_true. The loss type is a template
// parameter so the element loops carry no branch and vectorise.
template <LossType kType, typename A>
MXO_HD A element_loss(A d, A delta) {
  const A ad = abs_val(d);
  if (kType == LossType::kL1) return ad;
  return ad <= delta ? A(0.5) * d * d : delta * (ad - A(0.5) * delta);
}

// Which valid elements count (SPEC 3.2): those whose loss is finite in the
// accumulation type. A NaN or Inf input makes d, and so the loss, non-finite;
// so does a finite difference that overflows (-3e38 vs 3e38 in float32) or a
// Huber loss that does. Every element that does not count is excluded from
// the sums and counted in nonfinite_count, and gets a zero gradient.
// Element losses are >= 0 or NaN, so "e <= max" is the test; for L1 it is
// spelt "not above max and not NaN" (same truth table), because GCC leaves
// the float32 L1 loop scalar with the first form and the Huber one with the
// second (instruction counts: benchmarks, callgrind).
template <LossType kType, typename A>
MXO_HD bool element_counts(A elem_loss) {
  if (kType == LossType::kL1) return !(elem_loss > Limits<A>::kMax) && elem_loss == elem_loss;
  return elem_loss <= Limits<A>::kMax;
}

// d(element_loss)/d(d); sign(0) = 0.
template <LossType kType, typename A>
MXO_HD A element_loss_grad(A d, A delta) {
  const A sign = d > A(0) ? A(1) : (d < A(0) ? A(-1) : A(0));
  if (kType == LossType::kL1) return sign;
  return abs_val(d) <= delta ? d : delta * sign;
}

// ---------------------------------------------------------------------------
// Per-sample and batch reductions.
struct SampleTotals {
  double sum;         // S_b
  int64_t count;      // n_b: valid finite elements
  int64_t nonfinite;  // valid elements that are not finite
};

// per_sample[b] = S_b / n_b, or 0 for an empty sample.
MXO_HD double sample_mean(double sum, int64_t count) {
  return count > 0 ? sum / double(count) : 0.0;
}

// Per-element weights of sample b for the backward pass:
//   weight_loss[b]   = d loss / d elem  (c_b of the spec)
//   weight_sample[b] = d per_sample[b] / d elem  (1 / n_b)
MXO_HD void sample_weights(int64_t count, int64_t active, int64_t total_count, Normalization norm,
                           double* weight_loss, double* weight_sample) {
  if (count <= 0) {
    *weight_loss = 0.0;
    *weight_sample = 0.0;
    return;
  }
  *weight_sample = 1.0 / double(count);
  *weight_loss = norm == Normalization::kPerSample ? 1.0 / (double(active) * double(count))
                                                   : 1.0 / double(total_count);
}

// Final loss from the batch totals.
//   per_sample: mean over active samples of per_sample[b] (sum_means is the
//               sum of those means, in a fixed order).
//   global:     sum S_b / sum n_b.
MXO_HD double batch_loss(Normalization norm, double sum_means, int64_t active, double total_sum,
                         int64_t total_count) {
  if (norm == Normalization::kPerSample) return active > 0 ? sum_means / double(active) : 0.0;
  return total_count > 0 ? total_sum / double(total_count) : 0.0;
}

// ---------------------------------------------------------------------------
// The one rule for a corrupted incoming state (NaN, Inf, negative or
// fractional counters, a ring head or window count out of range, a window
// that does not match its head, non-finite losses in it). update_state
// applies it before every update; myxtts_ops/reference.py (_sanitize_state)
// restates it in TF ops with the generated constants, and a property test
// feeds both arbitrary states (tests/test_silent_errors.py). A state the op
// wrote is never changed by it.
//   * steps, clean_steps, nonfinite_steps: not an integer in [0, kMaxCount]
//     -> 0.
//   * running_mean not finite -> 0, and clean_steps -> 0 so the decay ramps
//     up again as on a fresh state.
//   * last_loss not finite -> 0.
//   * The window is kept only when window_count is an integer in
//     [0, kWindowSize], ring_head an integer in [0, kWindowSize), ring_head ==
//     window_count while the window is not full, every slot and window_mean
//     are finite and window_variance is not NaN (+Inf is what a finite
//     window of values near 1e300 gives); otherwise it restarts: ring_head, window_count,
//     window_mean, window_variance and every slot -> 0.
MXO_HD bool is_state_count(double x) { return x >= 0.0 && x <= state::kMaxCount && x == floor(x); }

MXO_HD void sanitize_state(double* s) {
  using namespace state;
  if (!is_state_count(s[kSteps])) s[kSteps] = 0.0;
  if (!is_state_count(s[kCleanSteps])) s[kCleanSteps] = 0.0;
  if (!is_state_count(s[kNonfiniteSteps])) s[kNonfiniteSteps] = 0.0;
  if (!is_finite(s[kRunningMean])) {
    s[kRunningMean] = 0.0;
    s[kCleanSteps] = 0.0;
  }
  if (!is_finite(s[kLastLoss])) s[kLastLoss] = 0.0;
  const double count = s[kWindowCount];
  const double head = s[kRingHead];
  bool window_ok = is_state_count(count) && count <= double(kWindowSize) && is_state_count(head) &&
                   head < double(kWindowSize) && (count == double(kWindowSize) || head == count) &&
                   is_finite(s[kWindowMean]) && s[kWindowVariance] == s[kWindowVariance];
  for (int i = 0; i < kWindowSize; ++i) window_ok = window_ok && is_finite(s[kRingStart + i]);
  if (!window_ok) {
    s[kRingHead] = 0.0;
    s[kWindowCount] = 0.0;
    s[kWindowMean] = 0.0;
    s[kWindowVariance] = 0.0;
    for (int i = 0; i < kWindowSize; ++i) s[kRingStart + i] = 0.0;
  }
}

// Running statistics: out = update(sanitize(in)). `loss` is the loss as
// returned to the caller (already rounded to its output dtype), so a
// reference that sees the same output reproduces the state exactly. A step
// with a non-finite element (nonfinite_count > 0) or a non-finite loss (the
// finite element losses overflowed their sum) is a non-finite step: only
// steps and nonfinite_steps move, so an overflow never enters the
// statistics. `in` and `out` may alias.
MXO_HD void update_state(const double* in, double* out, double loss, int64_t nonfinite_count,
                         int64_t valid_count) {
  // Works on `out` directly (no local array: keeps GPU code free of local
  // memory); copying first makes in == out safe.
  if (out != in)
    for (int i = 0; i < state::kSize; ++i) out[i] = in[i];
  sanitize_state(out);
  out[state::kSteps] += 1.0;
  if (nonfinite_count > 0 || !is_finite(loss)) {
    out[state::kNonfiniteSteps] += 1.0;
    return;
  }
  if (valid_count <= 0) return;
  const double k = out[state::kCleanSteps] + 1.0;
  out[state::kCleanSteps] = k;
  double decay = k / state::kDecayRamp;
  if (decay > state::kMaxDecay) decay = state::kMaxDecay;
  out[state::kRunningMean] = decay * out[state::kRunningMean] + (1.0 - decay) * loss;
  out[state::kLastLoss] = loss;

  // sanitize_state left ring_head an integer in [0, kWindowSize) and
  // window_count one in [0, kWindowSize].
  const int head = int(out[state::kRingHead]);
  out[state::kRingStart + head] = loss;
  out[state::kRingHead] = double((head + 1) % state::kWindowSize);
  double filled = out[state::kWindowCount] + 1.0;
  if (filled > state::kWindowSize) filled = state::kWindowSize;
  out[state::kWindowCount] = filled;

  const int n = int(filled);
  double mean = 0.0;
  for (int i = 0; i < n; ++i) mean += out[state::kRingStart + i];
  mean /= double(n);
  double var = 0.0;
  if (n >= 2) {
    for (int i = 0; i < n; ++i) {
      const double dv = out[state::kRingStart + i] - mean;
      var += dv * dv;
    }
    var /= double(n);
  }
  out[state::kWindowMean] = mean;
  out[state::kWindowVariance] = var;
}

}  // namespace myxtts_ops
