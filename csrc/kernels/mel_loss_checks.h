// Host-side argument rules of the masked mel loss (SPEC 3.5), shared by every
// entry point: the TF OpKernels (csrc/tf/mel_loss_op.cc), the XLA kernels at
// compile time (csrc/tf/mel_loss_xla.cc), the XLA FFI handlers at run time
// (csrc/xla/mel_loss_ffi.cc) and the pybind11 module
// (csrc/python/kernels_module.cc), so every path refuses the same input with
// the same message. Each rule is written here once; a check returns an empty
// string when the input is fine, else a message naming the input and its bad
// value, which callers turn into their own error type. No framework headers.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mel_loss_kernels.h"

namespace myxtts_ops {

using Dims = std::vector<int64_t>;

// Smallest accepted huber_delta: the smallest normal float32. The kernels of
// float16/bfloat16/float32 inputs compute with delta as a float32, and TF runs
// kernels with denormals flushed to zero, where a smaller delta acts as 0; the
// one rule holds for float64 inputs too.
constexpr double kMinHuberDelta = 1.1754943508222875e-38;
constexpr double kMaxHuberDelta = 1.7976931348623157e308;

// Shortest decimal text that reads back as `x` ("1e-320", "nan", "-inf").
// Right under denormals-are-zero too (TF sets it for op kernels).
std::string format_double(double x);
std::string format_float(float x);

// "[2,3,4]", the way TensorShape::DebugString writes a shape.
std::string shape_string(const Dims& dims);

// loss_type ("l1" | "huber") and normalization ("per_sample" | "global")
// into *config (huber_delta is left as it is): the one mapping from the
// names every entry point takes to the kernels' enums.
std::string parse_loss_names(std::string_view loss_type, std::string_view normalization,
                             LossConfig* config);

// huber_delta must be a finite float64 in [kMinHuberDelta, kMaxHuberDelta].
std::string huber_delta_error(double delta);
std::string check_huber_delta_shape(const Dims& huber_delta);

// [batch, frames, mels] is a shape the kernels handle: no size is negative,
// frames fits int32 (lengths travel to the GPU as int32), and the elements'
// bytes (8 per element at most) and the per-sample arrays fit in int64 with
// room to spare, so no size computed from them overflows.
std::string mel_shape_error(int64_t batch, int64_t frames, int64_t mels);

// Rank and shapes of y_true, y_pred and (when use_lengths) lengths, then
// mel_shape_error; fills *shape.
std::string check_mel_shapes(const Dims& y_true, const Dims& y_pred, const Dims& lengths,
                             bool use_lengths, MelShape* shape);
std::string check_state_shape(const Dims& state);

// The stop-token op's inputs (every entry point's one rule): stop_target and
// stop_tokens of one shape [batch, frames], lengths [batch]; then every length
// in [0, frames]. Empty string when they are fine.
std::string check_stop_shapes(const Dims& target, const Dims& pred, const Dims& lengths);
std::string stop_lengths_error(const int32_t* lengths, int64_t batch, int64_t frames);
// Smallest accepted stop prob_min: 2^-24, the spacing of float32 just below
// 1, so the upper clip bound 1 - prob_min is below 1 and log(1 - pc) finite
// (from 2^-25 down, 1 - prob_min rounds to 1 and log(1 - pc) is log(0)).
// Normal, so denormals-are-zero (set for TF's op kernels) cannot turn it into 0.
constexpr float kMinStopProbMin = 0x1p-24f;

// positive_weight and label_smoothing finite, prob_min in [kMinStopProbMin,
// 0.5) (compared on the bits, so a subnormal is refused under
// denormals-are-zero too and the message prints its true value).
std::string stop_config_error(float positive_weight, float label_smoothing, float prob_min);
// Inputs of the gradient op that come from the forward and from upstream.
std::string check_grad_shapes(const Dims& sample_weights, const Dims& grad_loss,
                              const Dims& grad_per_sample, int64_t batch);

// Index of the first length outside [0, frames] (and its value in
// *bad_value), or -1.
int64_t find_invalid_length(const LengthsView& lengths, int64_t batch, int64_t frames,
                            int64_t* bad_value);

// Length values (host memory): "<name>[b] = v is outside [0, limit]<note>"
// for the first bad one, or "".
std::string length_values_error(const LengthsView& lengths, int64_t batch, int64_t limit,
                                const std::string& name, const std::string& note);

// The same rule for lengths given as floats (host memory, each value as a
// double: exact for every float dtype): the first entry that is not a whole
// number in [0, limit] gives "<name>[b] = v is outside [0, limit]<note>" when
// it is a whole number, "<name>[b] = v is not a whole number in [0, limit]<note>"
// otherwise (a fraction, NaN, an infinity); or "". v is written as passed:
// the shortest float32 text when `single_precision` (float32, float16 and
// bfloat16 lengths), the shortest float64 text otherwise.
std::string float_length_values_error(const double* values, int64_t batch, int64_t limit,
                                      const std::string& name, const std::string& note,
                                      bool single_precision);

// The mel lengths' rule: length_values_error with name "lengths", limit frames
// and the note " (frames of y_true)".
std::string lengths_error(const LengthsView& lengths, int64_t batch, int64_t frames);

// A length check's limit: "" or why it is refused (the checked lengths are
// int32, so the limit must lie in [0, 2^31 - 1]).
std::string length_limit_error(int64_t limit);

// The limit and note a length check applies: `limit` with `note`, or the
// smallest of `bounds` (axis sizes known only when the graph runs or XLA
// compiles it) below it, with its entry of `bound_notes` (first on a tie).
// Returns "" or why the bounds are malformed (a count that does not match the
// notes, a negative size).
std::string pick_length_limit(int64_t limit, const std::string& note, const int32_t* bounds,
                              int64_t count, const std::vector<std::string>& bound_notes,
                              int64_t* limit_out, std::string* note_out);

// Axis sizes that must agree (known only when the graph runs or XLA compiles
// it): the first i with sizes[i] != expected[i] gives "<labels[i]> is
// <sizes[i]>, but <expected_labels[i]> is <expected[i]>"; or "". Also refuses
// vectors of different lengths and a count that does not match the labels.
std::string size_mismatch_error(const int32_t* sizes, int64_t count, const int32_t* expected,
                                int64_t expected_count, const std::vector<std::string>& labels,
                                const std::vector<std::string>& expected_labels);

// Copies validated host lengths (int32 or int64, values in [0, frames] with
// frames <= INT32_MAX) to int32, the form the CUDA kernels read. `lengths`
// must not be empty (data != nullptr).
void stage_lengths_int32(const LengthsView& lengths, int64_t batch, int32_t* out);

}  // namespace myxtts_ops
