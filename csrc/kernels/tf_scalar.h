// TensorFlow's scalar operations as the CPU kernels compute them, for the
// host ops that repeat a TF-ops definition bit for bit (adaptive_rule.h,
// term_finalise.h). Framework-free.
#pragma once

#include <cstdint>

#include "mel_loss_math.h"  // MXO_HD

namespace myxtts_ops {

// Maximum / Minimum (Eigen's NaN-propagating max and min): a NaN operand
// comes back as it is, the first one if both are; a tie returns the first
// operand, so minimum(-0, 0) is -0 and minimum(0, -0) is 0.
template <typename T>
MXO_HD T tf_max(T a, T b) {
  return a != a ? a : (b != b ? b : (a < b ? b : a));
}
template <typename T>
MXO_HD T tf_min(T a, T b) {
  return a != a ? a : (b != b ? b : (b < a ? b : a));
}
// tf.clip_by_value: minimum with the upper bound, then maximum with the lower.
template <typename T>
MXO_HD T tf_clip(T x, T lo, T hi) {
  return tf_max(tf_min(x, hi), lo);
}
// DivNoNan: 0 where the divisor is 0, whatever the dividend.
template <typename T>
MXO_HD T div_no_nan(T x, T y) {
  return y == T(0) ? T(0) : x / y;
}
// int64 + and -, wrapping as TensorFlow's do (signed overflow is undefined in C++).
MXO_HD int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
MXO_HD int64_t wrap_sub(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
}
// Cast float64 -> int64 as x86's conversion does (NaN and out of range: the
// minimum), without the undefined behaviour of a C++ cast out of range.
MXO_HD int64_t double_to_int64(double x) {
  if (!(x > -9223372036854775808.0 && x < 9223372036854775808.0)) return INT64_MIN;
  return static_cast<int64_t>(x);
}

}  // namespace myxtts_ops
